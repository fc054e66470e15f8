package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/u-root/mkuimage/cpio"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/eif"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/oci/ocitest"
)

// fakeBzImage writes a file with a bzImage setup header (HdrS and a
// kernel_version string), enough for build --format eif.
func fakeBzImage(t testing.TB, dir string) string {
	t.Helper()
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20e:], 0x100)
	copy(b[0x300:], "6.1.0-test (builder@example) #1 SMP\x00")
	p := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	imageOnce sync.Once
	imageDir  string
)

// testImage builds ocitest's image once per test binary.
func testImage(t *testing.T) string {
	t.Helper()
	ocitest.NeedTools(t)
	imageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "initramfs-image-")
		if err != nil {
			t.Fatal(err)
		}
		imageDir = dir
		ocitest.Build(t, dir, "")
	})
	if _, err := os.Stat(filepath.Join(imageDir, "oci")); err != nil {
		t.Fatalf("the test image was not built: %v", err)
	}
	return imageDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if imageDir != "" {
		os.RemoveAll(imageDir)
	}
	os.Exit(code)
}

type measurementsOut struct {
	Measurements map[string]string
}

func TestBuildEIFFromImage(t *testing.T) {
	img := testImage(t)
	dir := t.TempDir()
	kernel := fakeBzImage(t, dir)
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("INIT"), 0o755)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")

	build := func(ref, out string, extra ...string) measurementsOut {
		t.Helper()
		args := append([]string{"build", "--init", initBin, "--sim-config", "--kernel", kernel, "--format", "eif", "--from-image", ref, "-o", out}, extra...)
		stdout, stderr, err := run(t, args...)
		if err != nil {
			t.Fatalf("build: %v\n%s", err, stderr)
		}
		var m measurementsOut
		if err := json.Unmarshal([]byte(stdout), &m); err != nil {
			t.Fatalf("build printed %q: %v", stdout, err)
		}
		return m
	}
	a := filepath.Join(dir, "a.eif")
	m := build("oci:"+img+"/oci:app", a)
	if m.Measurements["HashAlgorithm"] != eif.HashAlgorithm || len(m.Measurements["PCR0"]) != 96 {
		t.Errorf("measurements %v", m.Measurements)
	}
	b := filepath.Join(dir, "b.eif")
	build("oci:"+img+"/oci:app", b)
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Error("two builds of the same image differ")
	}
	// The same image from another transport has the same PCRs (only the
	// unmeasured metadata names it differently).
	for _, ref := range []string{"docker-archive:" + img + "/app-docker.tar", "oci-archive:" + img + "/app-oci.tar"} {
		if o := build(ref, filepath.Join(dir, "c.eif")); o.Measurements["PCR0"] != m.Measurements["PCR0"] {
			t.Errorf("%s: PCR0 %s, oci gave %s", ref, o.Measurements["PCR0"], m.Measurements["PCR0"])
		}
	}

	out, _, err := run(t, "describe-eif", a)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		EifVersion   int
		Measurements map[string]string
		IsSigned     bool
		CheckCRC     bool
		ImageName    string
		ImageVersion string
		Metadata     map[string]any
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("describe-eif printed %q: %v", out, err)
	}
	if d.EifVersion != 4 || d.IsSigned || !d.CheckCRC || d.ImageName != "oci" || d.ImageVersion != "app" ||
		d.Measurements["PCR0"] != m.Measurements["PCR0"] || d.Metadata["BuildTime"] != "2023-11-14T22:13:20+00:00" ||
		d.Metadata["KernelVersion"] != "6.1.0-test" {
		t.Errorf("describe-eif: %s", out)
	}

	// The ramdisks: boot part has init and the config, app part the rootfs
	// with owners, /cmd and /env (with WorkingDir as PWD).
	f, closer, err := openEIF(a)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	var rds [][]byte
	for i, s := range f.Sections {
		if s.Type == nitro.EIFSectionRamdisk {
			b := make([]byte, s.Size)
			f.Reader(i).ReadAt(b, 0)
			rds = append(rds, b)
		}
	}
	if len(rds) != 2 {
		t.Fatalf("%d ramdisks, want 2", len(rds))
	}
	listing := func(b []byte) string {
		cmd := exec.Command("cpio", "-itv", "--quiet", "--numeric-uid-gid")
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.Output()
		if err != nil {
			t.Skipf("cpio: %v", err)
		}
		return string(out)
	}
	boot, app := listing(rds[0]), listing(rds[1])
	for _, w := range []string{" init\n", " etc/init.yaml\n", " dev/console\n"} {
		if !strings.Contains(boot, w) {
			t.Errorf("boot ramdisk lacks %q:\n%s", w, boot)
		}
	}
	for _, w := range []string{" cmd\n", " env\n", "1000     1001 ", " rootfs/home/user/file\n", " rootfs/bin/app-link -> app\n", " rootfs/dev/null\n", "2 0        0 "} {
		if !strings.Contains(app, w) {
			t.Errorf("app ramdisk lacks %q:\n%s", w, app)
		}
	}
	for _, no := range []string{"rootfs/deleteme", "rootfs/data/old1", " init\n"} {
		if strings.Contains(app, no) {
			t.Errorf("app ramdisk has %q:\n%s", no, app)
		}
	}
	files := map[string]string{}
	cmd := exec.Command("cpio", "-i", "--quiet", "--to-stdout", "cmd")
	cmd.Stdin = bytes.NewReader(rds[1])
	c, _ := cmd.Output()
	files["cmd"] = string(c)
	cmd = exec.Command("cpio", "-i", "--quiet", "--to-stdout", "env")
	cmd.Stdin = bytes.NewReader(rds[1])
	e, _ := cmd.Output()
	files["env"] = string(e)
	if files["cmd"] != "/bin/app\nargv\nfirst arg\ntwo words\n" || files["env"] != "FOO=bar\nGREETING=hello world\nPWD=/data\n" {
		t.Errorf("/cmd %q /env %q", files["cmd"], files["env"])
	}
}

func TestBuildEIFSigned(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("needs openssl to make the signing key and certificate")
	}
	dir := t.TempDir()
	key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	for _, args := range [][]string{
		{"ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", key},
		{"req", "-new", "-x509", "-key", key, "-out", cert, "-days", "30", "-subj", "/CN=eif-test"},
	} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("INIT"), 0o755)
	out := filepath.Join(dir, "s.eif")
	stdout, stderr, err := run(t, "build", "--init", initBin, "--kernel", fakeBzImage(t, dir), "--format", "eif", "-o", out,
		"--signing-certificate", cert, "--private-key", key)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var m measurementsOut
	json.Unmarshal([]byte(stdout), &m)
	der, _ := exec.Command("openssl", "x509", "-in", cert, "-outform", "DER").Output()
	if want := eif.Extend(der).String(); m.Measurements["PCR8"] != want {
		t.Errorf("PCR8 %q, want %s", m.Measurements["PCR8"], want)
	}
	d, _, err := run(t, "describe-eif", out)
	if err != nil || !strings.Contains(d, `"IsSigned": true`) || !strings.Contains(d, `"SignatureCheck": true`) {
		t.Errorf("describe-eif: %v\n%s", err, d)
	}
}

func TestBuildEIFErrors(t *testing.T) {
	dir := t.TempDir()
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("INIT"), 0o755)
	notBz := filepath.Join(dir, "vmlinux")
	os.WriteFile(notBz, []byte("\x7fELF"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--format", "tar"}, `--format "tar": want cpio or eif`},
		{[]string{"--format", "eif", "--kernel", notBz}, "is not a bzImage"},
		{[]string{"--format", "eif", "--kernel", notBz, "--private-key", "k"}, "go together"},
		{[]string{"--kernel", notBz}, "--kernel is for --format eif only"},
		{[]string{"--from-image", "docker://x"}, `transport "docker" is not supported`},
		{[]string{"--from-image", "oci:" + dir + "/none"}, "--from-image: image oci:" + dir + "/none"},
	} {
		args := append([]string{"build", "--init", initBin, "-o", filepath.Join(dir, "x")}, c.args...)
		if _, _, err := run(t, args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}

func TestDescribeEIFRefusesDamage(t *testing.T) {
	dir := t.TempDir()
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("INIT"), 0o755)
	p := filepath.Join(dir, "x.eif")
	if _, _, err := run(t, "build", "--init", initBin, "--kernel", fakeBzImage(t, dir), "--format", "eif", "-o", p); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	b[len(b)-100] ^= 0xff
	os.WriteFile(p, b, 0o644)
	if _, _, err := run(t, "describe-eif", p); err == nil || !strings.Contains(err.Error(), p+": eif: crc:") {
		t.Errorf("describe-eif of a damaged file: %v", err)
	}
}

func TestLines(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want string
		err  string
	}{
		{nil, "", ""},
		{[]string{"a", "", "b c"}, "a\n\nb c\n", ""},
		{[]string{"ok", "two\nlines"}, "", `/cmd: element 1 ("two\nlines") has a newline`},
	} {
		got, err := lines("/cmd", c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("lines(%q) = %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got == nil || string(got) != c.want {
			t.Errorf("lines(%q) = %q (nil %t), %v; want %q", c.in, got, got == nil, err, c.want)
		}
	}
}

func TestAppEnv(t *testing.T) {
	got := appEnv([]string{"A=1", "PWD=/old"}, "/srv/app/")
	if strings.Join(got, " ") != "A=1 PWD=/srv/app" {
		t.Errorf("appEnv = %q", got)
	}
	if got := appEnv([]string{"PWD=/x"}, ""); strings.Join(got, " ") != "PWD=/x" {
		t.Errorf("appEnv without WorkingDir = %q", got)
	}
}

// TestBuildEIFFromImageWithServices: service files given next to an image
// go where init reads them after switching to it, in the app ramdisk.
func TestBuildEIFFromImageWithServices(t *testing.T) {
	img := testImage(t)
	dir := t.TempDir()
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("INIT"), 0o755)
	svc := filepath.Join(dir, "web.service")
	os.WriteFile(svc, []byte("ExecStart = \"/bin/app\"\n"), 0o644)
	out := filepath.Join(dir, "s.eif")
	if _, stderr, err := run(t, "build", "--init", initBin, "--sim-config", "--kernel", fakeBzImage(t, dir), "--format", "eif",
		"--from-image", "oci:"+img+"/oci:app", "--service", svc, "-o", out); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	f, closer, err := openEIF(out)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	var app []byte
	for i, s := range f.Sections {
		if s.Type == nitro.EIFSectionRamdisk {
			app = make([]byte, s.Size)
			f.Reader(i).ReadAt(app, 0)
		}
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(app)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
	}
	if !strings.Contains(" "+strings.Join(names, " ")+" ", " rootfs/service/web.service ") {
		t.Errorf("the app ramdisk lacks rootfs/service/web.service: %v", names)
	}
}

// TestBootEIF checks what boot does with an EIF before QEMU runs: the
// printed measurements and command line, --append reported as unmeasured,
// and damaged or foreign EIFs refused by name.
func TestBootEIF(t *testing.T) {
	dir := t.TempDir()
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("INIT"), 0o755)
	p := filepath.Join(dir, "x.eif")
	stdout, _, err := run(t, "build", "--init", initBin, "--kernel", fakeBzImage(t, dir), "--format", "eif", "-o", p, "--cmdline", "console=ttyS0 measured=1")
	if err != nil {
		t.Fatal(err)
	}
	var m measurementsOut
	json.Unmarshal([]byte(stdout), &m)
	out, stderr, err := run(t, "boot", "--print-cmdline", "--accel", "tcg", "--route", "vhost-user", "--dir", filepath.Join(dir, "sim"), "--append", "extra=1", p)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, want := range []string{"initramfs: EIF " + p + ": PCR0 " + m.Measurements["PCR0"], "kernel command line (measured): console=ttyS0 measured=1", `--append "extra=1" follows it, not measured`} {
		if !strings.Contains(stderr, want) {
			t.Errorf("boot's report lacks %q:\n%s", want, stderr)
		}
	}
	if !strings.Contains(out, "-append 'console=ttyS0 measured=1 extra=1'") || !strings.Contains(out, "-kernel "+filepath.Join(dir, "sim", "eif-kernel")) {
		t.Errorf("QEMU command line: %s", out)
	}
	// Under --dir the unpacked kernel stays for the printed command.
	if _, err := os.Stat(filepath.Join(dir, "sim", "eif-initrd")); err != nil {
		t.Errorf("the printed command's initrd is gone: %v", err)
	}
	if _, _, err := run(t, "boot", "--print-cmdline", "--kernel", p, p); err == nil || !strings.Contains(err.Error(), "carries its own kernel") {
		t.Errorf("boot --kernel with an EIF: %v", err)
	}

	b, _ := os.ReadFile(p)
	for _, c := range []struct {
		name   string
		damage func([]byte)
		want   string
	}{
		{"crc", func(b []byte) { b[len(b)-1] ^= 1 }, ": eif: crc:"},
		{"version", func(b []byte) { b[5] = 3 }, ": eif: version: 3"},
		{"arm64", func(b []byte) { b[7] = 1; fixEIFCRC(b) }, ": eif: flags: 0x0001 marks an arm64 image"},
	} {
		bad := bytes.Clone(b)
		c.damage(bad)
		q := filepath.Join(dir, c.name+".eif")
		os.WriteFile(q, bad, 0o644)
		if _, _, err := run(t, "boot", "--print-cmdline", q); err == nil || !strings.Contains(err.Error(), q+c.want) {
			t.Errorf("%s: boot said %v, want %q", c.name, err, c.want)
		}
	}
}

// fixEIFCRC recomputes an EIF's header CRC after a test changed it.
func fixEIFCRC(b []byte) {
	crc := crc32.NewIEEE()
	crc.Write(b[:nitro.EIFHeaderSize-4])
	crc.Write(b[nitro.EIFHeaderSize:])
	binary.BigEndian.PutUint32(b[nitro.EIFHeaderSize-4:], crc.Sum32())
}

// split puts what init reads before the root switch (its configuration and
// --nsm's marker) into the boot ramdisk, and the app's files into the app
// ramdisk.
func TestSplit(t *testing.T) {
	spec := image.Spec{Files: []image.File{
		{Data: []byte("c"), Dst: image.ConfigPath},
		{Data: []byte("i"), Dst: image.InitctlConfigPath},
		{Data: []byte("m"), Dst: nitro.NSMSimMarker},
		{Data: []byte("a"), Dst: nitro.CmdPath},
		{Data: []byte("x"), Dst: "/rootfs/bin/x"},
	}}
	boot, app := split(spec)
	where := map[string]string{}
	for _, f := range boot.Files {
		where[f.Dst] = "boot"
	}
	for _, f := range app.Files {
		where[f.Dst] = "app"
	}
	for dst, want := range map[string]string{
		image.ConfigPath: "boot", image.InitctlConfigPath: "boot", nitro.NSMSimMarker: "boot",
		nitro.CmdPath: "app", "/rootfs/bin/x": "app",
	} {
		if where[dst] != want {
			t.Errorf("%s in the %q ramdisk, want %s", dst, where[dst], want)
		}
	}
}
