package main

import (
	"archive/tar"
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/u-root/mkuimage/cpio"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/eif"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/oci"
)

// Output formats of initramfs build.
const (
	formatCpio = "cpio"
	formatEIF  = "eif"
)

// eifFlags are build's flags for container images and EIFs.
type eifFlags struct {
	format    string
	fromImage string
	kernel    string
	cmdline   string
	cert      string
	key       string
	name      string
	version   string

	img *oci.Image // set by apply when --from-image is given
}

func (e *eifFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&e.format, "format", formatCpio, "output format: cpio (one initramfs) or eif (an Enclave Image File)")
	f.StringVar(&e.fromImage, "from-image", "", "container image for "+image.RootfsDir+", /cmd and /env: docker-archive:FILE, oci-archive:FILE or oci:DIR[:TAG]")
	f.StringVar(&e.kernel, "kernel", "", "with --format eif: the bzImage (default: the cached test kernel's)")
	f.StringVar(&e.cmdline, "cmdline", enclavesim.KernelCmdline(""), "with --format eif: the kernel command line stored (and measured) in the EIF")
	f.StringVar(&e.cert, "signing-certificate", "", "with --format eif: PEM certificate to sign with (adds PCR8)")
	f.StringVar(&e.key, "private-key", "", "with --format eif: PEM private key (ECDSA) of --signing-certificate")
	f.StringVar(&e.name, "image-name", "", "with --format eif: metadata ImageName (default: the image's repository)")
	f.StringVar(&e.version, "image-version", "", "with --format eif: metadata ImageVersion (default: the image's tag)")
}

// apply reads --from-image into spec: its flattened root at /rootfs, its
// Entrypoint and Cmd as /cmd, its Env (and WorkingDir, as PWD) as /env.
func (e *eifFlags) apply(spec *image.Spec) error {
	switch e.format {
	case formatCpio, formatEIF:
	default:
		return fmt.Errorf("--format %q: want %s or %s", e.format, formatCpio, formatEIF)
	}
	if e.format != formatEIF {
		for _, f := range []struct{ name, val string }{{"--kernel", e.kernel}, {"--signing-certificate", e.cert}, {"--private-key", e.key}} {
			if f.val != "" {
				return fmt.Errorf("%s is for --format eif only", f.name)
			}
		}
	}
	if (e.cert == "") != (e.key == "") {
		return fmt.Errorf("--signing-certificate and --private-key go together: give both or neither")
	}
	if e.fromImage == "" {
		return nil
	}
	if spec.Rootfs != "" {
		return fmt.Errorf("--rootfs %s and --from-image %s both give %s: drop one", spec.Rootfs, e.fromImage, image.RootfsDir)
	}
	ref, err := oci.ParseRef(e.fromImage)
	if err != nil {
		return fmt.Errorf("--from-image: %w", err)
	}
	img, err := oci.Open(ref)
	if err != nil {
		return fmt.Errorf("--from-image: %w", err)
	}
	e.img = img
	entries, err := img.Rootfs()
	if err != nil {
		return fmt.Errorf("--from-image: %w", err)
	}
	spec.Tree = treeFiles(entries)
	argv := img.Command()
	if len(argv) == 0 {
		if len(spec.Services) == 0 {
			return fmt.Errorf("--from-image %s: the image config has neither Entrypoint nor Cmd, so there is nothing to run (set one, or give --service files)", ref)
		}
		return nil // the services are the app; no /cmd
	}
	cmdFile, err := lines(nitro.CmdPath, argv)
	if err != nil {
		return fmt.Errorf("--from-image %s: %w", ref, err)
	}
	env := appEnv(img.Env(), img.WorkingDir())
	envFile, err := lines(nitro.EnvPath, env)
	if err != nil {
		return fmt.Errorf("--from-image %s: %w", ref, err)
	}
	spec.Files = append(spec.Files,
		image.File{Data: cmdFile, Dst: nitro.CmdPath, Mode: 0o644},
		image.File{Data: envFile, Dst: nitro.EnvPath, Mode: 0o644})
	return nil
}

// appEnv is the image's Env with its WorkingDir as PWD (replacing any PWD
// the Env has): init starts the app in the directory /env's PWD names.
func appEnv(env []string, wd string) []string {
	if wd == "" {
		return env
	}
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PWD=") {
			out = append(out, kv)
		}
	}
	return append(out, "PWD="+path.Clean(wd))
}

// lines writes one element per line, the AWS /cmd and /env layout, which
// cannot hold an element with a newline. The result is never nil (an empty
// /env is a file with no lines, and image.File takes nil Data as "copy Src").
func lines(file string, elems []string) ([]byte, error) {
	b := bytes.NewBuffer([]byte{})
	for i, s := range elems {
		if strings.Contains(s, "\n") {
			return nil, fmt.Errorf("%s: element %d (%q) has a newline, which the one-per-line layout cannot hold", file, i, s)
		}
		b.WriteString(s)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// treeFiles places an image's files under /rootfs.
func treeFiles(entries []oci.Entry) []image.TreeFile {
	out := make([]image.TreeFile, 0, len(entries))
	for _, e := range entries {
		tf := image.TreeFile{Dst: path.Join(image.RootfsDir, e.Name)}
		info := cpio.Info{Mode: uint64(e.Mode), UID: uint64(e.UID), GID: uint64(e.GID)}
		switch e.Typeflag {
		case tar.TypeReg:
			info.Mode |= cpio.S_IFREG
			info.FileSize = uint64(len(e.Data))
			tf.Record = cpio.StaticRecord(e.Data, info)
		case tar.TypeDir:
			info.Mode |= cpio.S_IFDIR
			tf.Record = cpio.Record{Info: info}
		case tar.TypeSymlink:
			info.Mode = cpio.S_IFLNK | 0o777
			info.FileSize = uint64(len(e.Linkname))
			tf.Record = cpio.StaticRecord([]byte(e.Linkname), info)
		case tar.TypeLink:
			tf.HardLink = path.Join(image.RootfsDir, e.Linkname)
		case tar.TypeChar, tar.TypeBlock:
			info.Mode |= cpio.S_IFCHR
			if e.Typeflag == tar.TypeBlock {
				info.Mode = info.Mode&^cpio.S_IFMT | cpio.S_IFBLK
			}
			info.Rmajor, info.Rminor = uint64(e.Devmajor), uint64(e.Devminor)
			tf.Record = cpio.Record{Info: info}
		case tar.TypeFifo:
			info.Mode |= cpio.S_IFIFO
			tf.Record = cpio.Record{Info: info}
		}
		out = append(out, tf)
	}
	return out
}

// split divides a spec into the EIF's two ramdisks: the boot part (init,
// initctl, their configuration, modules, /dev/console, and --nsm's marker,
// which init reads before it switches roots) and the app part (/rootfs,
// /cmd, /env, services, other files).
func split(spec image.Spec) (boot, app image.Spec) {
	boot = image.Spec{
		Init: spec.Init, Initctl: spec.Initctl, Config: spec.Config, InitctlConfig: spec.InitctlConfig,
		Modules: spec.Modules, NoConsole: spec.NoConsole,
	}
	app = image.Spec{AppOnly: true, Services: spec.Services, Rootfs: spec.Rootfs, Tree: spec.Tree}
	for _, f := range spec.Files {
		switch f.Dst {
		case image.ConfigPath, image.InitctlConfigPath, nitro.NSMSimMarker:
			boot.Files = append(boot.Files, f)
		default:
			app.Files = append(app.Files, f)
		}
	}
	return boot, app
}

func specBytes(s image.Spec) ([]byte, error) {
	var b bytes.Buffer
	if err := s.Write(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// buildTime is SOURCE_DATE_EPOCH, else the image's creation time, else the
// epoch: never the clock, so that builds are reproducible.
func buildTime(img *oci.Image) (time.Time, error) {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970 (%v)", s, err)
		}
		return time.Unix(n, 0), nil
	}
	if img != nil && !img.Config.Created.IsZero() {
		return img.Config.Created.Time, nil
	}
	return time.Unix(0, 0), nil
}

// kernelVersion reads the version string a bzImage carries (the setup
// header's kernel_version field), "" when there is none.
func kernelVersion(bz []byte) string {
	if len(bz) < 0x210 || string(bz[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := int(binary.LittleEndian.Uint16(bz[0x20e:])) + 0x200
	if off >= len(bz) {
		return ""
	}
	v := bz[off:min(off+256, len(bz))]
	if i := bytes.IndexByte(v, 0); i >= 0 {
		v = v[:i]
	}
	return strings.Fields(string(v) + " ")[0]
}

// toolVersion is this binary's module version.
func toolVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// buildEIF assembles the EIF for spec.
func (e *eifFlags) buildEIF(spec image.Spec) (*eif.Image, error) {
	kernelPath := e.kernel
	if kernelPath == "" {
		k, err := enclavesim.FindKernel()
		if err != nil {
			return nil, fmt.Errorf("--format eif needs a kernel: %w (or give --kernel BZIMAGE)", err)
		}
		kernelPath = k.Vmlinuz
	}
	kernel, err := os.ReadFile(kernelPath)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	kver := kernelVersion(kernel)
	if kver == "" {
		return nil, fmt.Errorf("kernel %s is not a bzImage (no HdrS setup header): EIFs carry bzImages", kernelPath)
	}
	bootSpec, appSpec := split(spec)
	boot, err := specBytes(bootSpec)
	if err != nil {
		return nil, fmt.Errorf("boot ramdisk: %w", err)
	}
	app, err := specBytes(appSpec)
	if err != nil {
		return nil, fmt.Errorf("app ramdisk: %w", err)
	}
	bt, err := buildTime(e.img)
	if err != nil {
		return nil, err
	}
	id := eif.Identity{
		ImageName:    "nitroinit",
		ImageVersion: "latest",
		BuildMetadata: eif.BuildMetadata{
			BuildTime:        eif.BuildTime(bt),
			BuildTool:        "initramfs",
			BuildToolVersion: toolVersion(),
			OperatingSystem:  "linux",
			KernelVersion:    kver,
		},
	}
	if e.img != nil {
		id.ImageName, id.ImageVersion = e.img.Name, e.img.Version
		id.DockerInfo = json.RawMessage(e.img.RawConfig)
		if e.img.Config.OS != "" {
			id.BuildMetadata.OperatingSystem = e.img.Config.OS
		}
	}
	if e.name != "" {
		id.ImageName = e.name
	}
	if e.version != "" {
		id.ImageVersion = e.version
	}
	meta, err := id.Marshal()
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	im := &eif.Image{Kernel: kernel, Cmdline: e.cmdline, Metadata: meta, Ramdisks: [][]byte{boot, app}}
	if e.cert != "" {
		certDER, key, err := loadSigner(e.cert, e.key)
		if err != nil {
			return nil, err
		}
		if err := im.Sign(certDER, key); err != nil {
			return nil, err
		}
	}
	return im, nil
}

// loadSigner reads a PEM certificate and its PEM private key.
func loadSigner(certPath, keyPath string) ([]byte, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("--signing-certificate: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("--signing-certificate %s: no PEM CERTIFICATE block", certPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("--private-key: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("--private-key %s: no PEM block", keyPath)
	}
	var key any
	switch kb.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	default:
		return nil, nil, fmt.Errorf("--private-key %s: PEM block %q, want EC PRIVATE KEY or PRIVATE KEY", keyPath, kb.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--private-key %s: %w", keyPath, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("--private-key %s: %T cannot sign", keyPath, key)
	}
	return cb.Bytes, signer, nil
}

// writeEIF builds the EIF, writes it to out (through a temporary file and
// a rename) and prints its measurements as nitro-cli build-enclave does.
func (e *eifFlags) writeEIF(cmd *cobra.Command, spec image.Spec, out string) error {
	fmt.Fprintln(cmd.ErrOrStderr(), "Start building the Enclave Image...")
	im, err := e.buildEIF(spec)
	if err != nil {
		return err
	}
	m, err := im.Measure()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return fmt.Errorf("creating the EIF next to %s: %w", out, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := im.WriteTo(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("renaming the EIF to %s: %w", out, err)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Enclave Image successfully created: %s\n", out)
	return printJSON(cmd.OutOrStdout(), struct{ Measurements eif.Measurements }{m})
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// openEIF opens and validates an EIF file. Close the returned file.
func openEIF(p string) (*eif.File, *os.File, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	ef, err := eif.Open(f, st.Size())
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	return ef, f, nil
}

func describeEIFCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "describe-eif FILE",
		Short: "Print an EIF's measurements and metadata as nitro-cli describe-eif does",
		Long: `Validate FILE (magic, version, flags, section offsets, sizes and types, CRC;
a signature must verify) and print nitro-cli describe-eif's JSON: EifVersion,
Measurements (PCR0, PCR1, PCR2, and PCR8 when signed), IsSigned, CheckCRC,
ArchitectureType, SignatureCheck (signed only), ImageName, ImageVersion and
Metadata. A damaged file is refused with the field that is wrong.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ef, f, err := openEIF(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			d, err := eif.Describe(ef)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return printJSON(cmd.OutOrStdout(), d)
		},
	}
}
