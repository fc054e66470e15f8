package forward

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// AllowList is the set of TCP targets a parent-side egress forwarder may
// dial. Its file has the shape of AWS vsock-proxy's configuration:
//
//	allowlist:
//	- {address: kms.us-east-1.amazonaws.com, port: 443}
//	- address: 10.0.0.5
//	  port: 8080
//
// A target matches an entry when the host names are equal (ignoring case)
// and the ports are equal. Names are compared as written, never resolved, so
// an enclave cannot reach a host by another name of the same address.
type AllowList struct {
	entries map[string]bool // "host:port", host lowercased
}

// maxAllowFile bounds the allow-list file so that a wrong path (a log, a
// device) is refused rather than read into memory.
const maxAllowFile = 1 << 20

// LoadAllowList reads and checks an allow-list file. Every problem is
// reported with the file, line and value.
func LoadAllowList(path string) (*AllowList, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("allow-list: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAllowFile+1))
	if err != nil {
		return nil, fmt.Errorf("allow-list %s: %w", path, err)
	}
	if len(data) > maxAllowFile {
		return nil, fmt.Errorf("allow-list %s: larger than %d bytes", path, maxAllowFile)
	}
	return ParseAllowList(path, data)
}

// ParseAllowList checks allow-list content; path is used in messages.
func ParseAllowList(path string, data []byte) (*AllowList, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("allow-list %s: not valid YAML: %w", path, err)
	}
	a := &AllowList{entries: map[string]bool{}}
	var errs []error
	bad := func(n *yaml.Node, value, msg string) {
		errs = append(errs, &SpecError{Where: fmt.Sprintf("%s:%d", path, n.Line), Value: value, Msg: msg})
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("allow-list %s: empty; want \"allowlist:\" with a list of {address: HOST, port: PORT}", path)
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		bad(root, root.Value, `want a mapping with the key "allowlist"`)
		return nil, errors.Join(errs...)
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		if k.Value != "allowlist" {
			bad(k, k.Value, `unknown key (the only key is "allowlist")`)
			continue
		}
		list = root.Content[i+1]
	}
	if list == nil {
		if len(errs) == 0 {
			bad(root, "", `no "allowlist" key`)
		}
		return nil, errors.Join(errs...)
	}
	if list.Kind != yaml.SequenceNode {
		bad(list, list.Value, "want a list of {address: HOST, port: PORT}")
		return nil, errors.Join(errs...)
	}
	for _, item := range list.Content {
		if item.Kind != yaml.MappingNode {
			bad(item, item.Value, "want {address: HOST, port: PORT}")
			continue
		}
		var host, port string
		var hostNode, portNode *yaml.Node
		for i := 0; i+1 < len(item.Content); i += 2 {
			k, v := item.Content[i], item.Content[i+1]
			switch k.Value {
			case "address":
				host, hostNode = v.Value, v
			case "port":
				port, portNode = v.Value, v
			default:
				bad(k, k.Value, "unknown key (use address and port)")
			}
		}
		switch {
		case hostNode == nil:
			bad(item, "", "entry has no address")
			continue
		case portNode == nil:
			bad(item, host, "entry has no port")
			continue
		}
		if host == "" || strings.ContainsAny(host, " /:\t") && net.ParseIP(host) == nil {
			bad(hostNode, host, "not a host name or IP address")
			continue
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			bad(portNode, port, "not a TCP port (1-65535)")
			continue
		}
		a.entries[targetKey(host, strconv.FormatUint(p, 10))] = true
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return a, nil
}

func targetKey(host, port string) string {
	return net.JoinHostPort(strings.ToLower(strings.Trim(host, "[]")), port)
}

// Allowed reports whether the TCP target host:port is on the list. A nil
// list allows nothing.
func (a *AllowList) Allowed(target string) bool {
	if a == nil {
		return false
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return false
	}
	return a.entries[targetKey(host, port)]
}

// Len is the number of entries.
func (a *AllowList) Len() int {
	if a == nil {
		return 0
	}
	return len(a.entries)
}
