package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

// BenchmarkBuildEIF builds an EIF from a 100 MB image (four gzipped layers
// of 25 MB of random bytes, in an OCI layout), next to the floor of
// reading and writing the same layer files once with cat. Compare the two
// ns/op of one run (docs/benchmarks.md); neither is a pass/fail threshold.
//
//	go test -run '^$' -bench BuildEIF -benchtime 3x ./initramfs
func BenchmarkBuildEIF(b *testing.B) {
	const layers, layerSize = 4, 25 << 20
	dir := b.TempDir()
	img, err := random.Image(layerSize, layers)
	if err != nil {
		b.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Cmd: []string{"/app"}})
	if err != nil {
		b.Fatal(err)
	}
	lp, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		b.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		b.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		b.Fatal(err)
	}
	var blobs []string
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			b.Fatal(err)
		}
		blobs = append(blobs, filepath.Join(dir, "oci", "blobs", d.Algorithm, d.Hex))
	}
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("INIT"), 0o755)
	kernel := fakeBzImage(b, dir)
	out := filepath.Join(dir, "out.eif")

	b.Run("cat-layers", func(b *testing.B) {
		b.SetBytes(layers * layerSize)
		for i := 0; i < b.N; i++ {
			f, err := os.Create(out)
			if err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command("cat", blobs...)
			cmd.Stdout = f
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	b.Run("build-eif", func(b *testing.B) {
		b.SetBytes(layers * layerSize)
		for i := 0; i < b.N; i++ {
			root := newRoot()
			root.SetOut(devNull{})
			root.SetErr(devNull{})
			root.SetArgs([]string{"build", "--init", initBin, "--kernel", kernel, "--format", "eif",
				"--from-image", "oci:" + filepath.Join(dir, "oci"), "-o", out})
			if err := root.Execute(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

type devNull struct{}

func (devNull) Write(p []byte) (int, error) { return len(p), nil }
