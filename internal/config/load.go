package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// LoadInit reads init.yaml at path. It always returns a usable configuration:
// every key it could read is kept and everything else has its default.
//
// The errors describe what was not used, each an *Error naming file, line and
// key. A missing file gives exactly one error that satisfies
// errors.Is(err, fs.ErrNotExist) and says the defaults are in use. Unknown and
// duplicate keys are warnings (IsWarning reports true).
func LoadInit(path string) (*Init, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := "cannot read the file; using built-in defaults: " + err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			msg = "file not found; using built-in defaults"
		}
		return DefaultInit(), []error{&Error{File: path, Msg: msg, Err: err}}
	}
	return ParseInit(path, data)
}

// ParseInit decodes init.yaml content; path is used in messages only. See
// LoadInit for how problems are reported.
func ParseInit(path string, data []byte) (*Init, []error) {
	c := DefaultInit()
	d := &decoder{file: path}
	root, ok := d.document(data)
	if !ok || root == nil {
		return c, d.errs
	}
	ctl := &c.Control
	perm := &ctl.Permissions
	var nsm *string = &c.NSMDriverPath
	d.mapping("", root, map[string]field{
		"service_dir":    d.path(&c.ServiceDir),
		"log_dir":        d.path(&c.LogDir),
		"max_log_size":   d.logSize(&c.MaxLogSize),
		"max_log_files":  d.logFiles(&c.MaxLogFiles),
		"log_ring_lines": d.intFieldInt(&c.LogRingLines, 0, 1000000),
		"environment":    d.environment(&c.Environment),
		"control": func(key string, n *yaml.Node) {
			d.mapping(key, n, map[string]field{
				"unix_socket_enabled": d.boolean(&ctl.UnixSocketEnabled),
				"unix_socket_path":    d.path(&ctl.UnixSocketPath),
				"vsock_enabled":       d.boolean(&ctl.VsockEnabled),
				"vsock_cid":           d.uint32Field(&ctl.VsockCID, "a CID", true),
				"vsock_port":          d.uint32Field(&ctl.VsockPort, "a port number", false),
				"max_connections":     d.intFieldInt(&ctl.MaxConnections, 1, 65536),
				"io_timeout":          d.duration(&ctl.IOTimeout),
				"permissions": func(key string, n *yaml.Node) {
					d.mapping(key, n, map[string]field{
						"unix": func(key string, n *yaml.Node) {
							d.mapping(key, n, map[string]field{
								"uids":    d.uint32List(&perm.Unix.UIDs, "a numeric uid"),
								"gids":    d.uint32List(&perm.Unix.GIDs, "a numeric gid"),
								"classes": d.classes(&perm.Unix.Classes),
							})
						},
						"vsock": func(key string, n *yaml.Node) {
							d.mapping(key, n, map[string]field{
								"cids":    d.uint32List(&perm.Vsock.CIDs, "a CID"),
								"classes": d.classes(&perm.Vsock.Classes),
							})
						},
					})
				},
			})
		},
		"vsock": func(key string, n *yaml.Node) {
			d.mapping(key, n, map[string]field{
				"enabled": d.boolean(&c.Vsock.Enabled),
				"cid":     d.uint32Field(&c.Vsock.CID, "a CID", false),
				"port":    d.uint32Field(&c.Vsock.Port, "a port number", false),
				"timeout": d.duration(&c.Vsock.Timeout),
			})
		},
		"nsm_driver_path": func(key string, n *yaml.Node) {
			// null is meaningful here: it turns NSM loading off, as in the reference.
			if isNull(n) {
				*nsm = ""
				return
			}
			d.str(nsm)(key, n)
		},
		"kernel_modules": d.strList(&c.KernelModules, "a module file path"),
		"pivot_root":     d.boolean(&c.PivotRoot),
		"pivot_root_dir": d.path(&c.PivotRootDir),
		"cgroups":        d.enum(&c.Cgroups, CgroupsAuto, CgroupsV2, CgroupsV1, CgroupsOff),
		"loopback":       d.boolean(&c.Loopback),
		"on_failure": func(key string, n *yaml.Node) {
			d.mapping(key, n, map[string]field{
				"heartbeat":  d.action(&c.OnFailure.Heartbeat),
				"nsm":        d.action(&c.OnFailure.NSM),
				"pivot_root": d.action(&c.OnFailure.PivotRoot),
			})
		},
	})
	return c, d.errs
}

func (d *decoder) action(dst *Action) field {
	return func(key string, n *yaml.Node) {
		s := string(*dst)
		d.enum(&s, string(ActionWarn), string(ActionFatal))(key, n)
		*dst = Action(s)
	}
}

// document parses data into its top-level node. An empty file (or one with
// only comments) is valid and yields nil.
func (d *decoder) document(data []byte) (*yaml.Node, bool) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = yamlLineRE.ReplaceAllString(msg, "")
		msg = strings.TrimLeft(msg, ": ")
		d.errs = append(d.errs, &Error{
			File: d.file, Line: yamlErrorLine(err),
			Msg: "not valid YAML (" + msg + "); using built-in defaults for the whole file",
			Err: err,
		})
		return nil, false
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, true
	}
	return doc.Content[0], true
}

// Initctl is the configuration of initctl, read from initctl.yaml.
type Initctl struct {
	// Protocol is "unix", "vsock" or "hybrid". "vsock" with VsockUDSPath set
	// behaves as "hybrid".
	Protocol       string
	UnixSocketPath string // unix_socket_path
	VsockCID       uint32 // vsock_cid: the enclave's CID
	VsockPort      uint32 // vsock_port
	// VsockUDSPath is the Unix socket of a hybrid vsock device (Firecracker,
	// vhost-device-vsock, our simulator); when set, vsock goes through it.
	VsockUDSPath string
	// Warnings lists ignored keys ("file:line: key: unknown key, ignored").
	Warnings []string
}

// Transport values returned by (*Initctl).Transport.
const (
	ProtocolUnix   = "unix"
	ProtocolVsock  = "vsock"
	ProtocolHybrid = "hybrid"
)

// DefaultInitctl returns initctl's built-in configuration.
func DefaultInitctl() *Initctl {
	return &Initctl{
		Protocol:       ProtocolUnix,
		UnixSocketPath: DefaultSocketPath,
		VsockCID:       DefaultParentCID,
		VsockPort:      DefaultControlPort,
	}
}

// Transport returns how to connect: "unix", "vsock" (AF_VSOCK) or "hybrid"
// (CONNECT over the Unix socket VsockUDSPath).
func (c *Initctl) Transport() string {
	if c.Protocol == ProtocolVsock && c.VsockUDSPath != "" {
		return ProtocolHybrid
	}
	return c.Protocol
}

// LoadInitctl reads initctl.yaml at path. A missing file gives the defaults
// and no error. Any other problem gives an error listing every problem
// (file:line: key: message); the returned configuration is still filled with
// what could be read, but callers should stop, since a client that talks to
// the wrong place is worse than one that says why it will not.
func LoadInitctl(path string) (*Initctl, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return DefaultInitctl(), nil
	}
	if err != nil {
		return DefaultInitctl(), fmt.Errorf("%s: cannot read initctl config: %w", path, err)
	}
	return ParseInitctl(path, data)
}

// ParseInitctl decodes initctl.yaml content; see LoadInitctl.
func ParseInitctl(path string, data []byte) (*Initctl, error) {
	c := DefaultInitctl()
	d := &decoder{file: path}
	root, ok := d.document(data)
	if ok && root != nil {
		d.mapping("", root, map[string]field{
			"protocol":         d.enum(&c.Protocol, ProtocolUnix, ProtocolVsock, ProtocolHybrid),
			"unix_socket_path": d.path(&c.UnixSocketPath),
			"vsock_cid":        d.uint32Field(&c.VsockCID, "a CID", false),
			"vsock_port":       d.uint32Field(&c.VsockPort, "a port number", false),
			"vsock_uds_path":   d.str(&c.VsockUDSPath),
		})
	}
	if c.Protocol == ProtocolHybrid && c.VsockUDSPath == "" {
		d.errs = append(d.errs, &Error{File: path, Key: "vsock_uds_path",
			Msg: `protocol "hybrid" needs vsock_uds_path (the hybrid vsock Unix socket of the VM)`})
	}
	var errs []error
	for _, e := range d.errs {
		if IsWarning(e) {
			c.Warnings = append(c.Warnings, e.Error())
			continue
		}
		errs = append(errs, e)
	}
	return c, errors.Join(errs...)
}
