# Build, test and demo targets. Everything builds static binaries
# (CGO_ENABLED=0) with the Go toolchain named in go.mod.

GO      ?= $(CURDIR)/ci/go
BIN     ?= bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
export CGO_ENABLED = 0

# Packages with unit and integration tests: everything but the vmtests.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /vmtests)
FUZZTIME ?= 2m

.PHONY: all build test unit vmtest bench fuzz lint deps kernel demo clean chaos

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/init ./init
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/initctl ./initctl
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/initramfs ./initramfs

# Install the packages and the test kernel that the tests and the demo need.
deps:
	ci/install-deps.sh
	ci/fetch-kernel.sh

kernel:
	ci/fetch-kernel.sh

# See it work: boot an enclave image in the simulator and manage it with
# initctl from the host.
demo: deps build
	ci/demo.sh

# Every test: unit, integration, then the vmtests (which fail if any skip).
test: deps unit vmtest

unit:
	GO=$(GO) ci/test.sh unit $(UNIT_PKGS)

vmtest:
	GO=$(GO) ci/test.sh vmtest ./vmtests/...

bench: build
	ci/bench.sh

fuzz:
	ci/fuzz.sh $(FUZZTIME)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
