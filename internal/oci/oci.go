// Package oci reads container images from files and directories, without a
// container daemon, and flattens them into one root filesystem.
//
// References use the transport syntax of skopeo and podman:
//
//	docker-archive:FILE[:NAME:TAG]  what `docker save` and `podman save` write
//	oci-archive:FILE[:TAG]          a tar of an OCI image layout
//	oci:DIR[:TAG]                   an OCI image layout directory
//
// Images are read with github.com/google/go-containerregistry; layers are
// applied in order by its mutate.Extract, which honours whiteouts
// (.wh.NAME) and opaque directories (.wh..wh..opq).
package oci

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Transports this package reads.
const (
	DockerArchive = "docker-archive"
	OCIArchive    = "oci-archive"
	OCILayout     = "oci"
)

// refNameAnnotation is the OCI annotation skopeo and umoci put the tag in.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Ref is a parsed image reference.
type Ref struct {
	Transport string
	Path      string // the archive file or layout directory
	Tag       string // optional: which image of several
}

func (r Ref) String() string {
	if r.Tag == "" {
		return r.Transport + ":" + r.Path
	}
	return r.Transport + ":" + r.Path + ":" + r.Tag
}

// ParseRef parses TRANSPORT:PATH[:TAG]. The path ends at the first colon
// after it that does not leave an existing file or directory, so paths with
// colons work when they exist.
func ParseRef(s string) (Ref, error) {
	transport, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return Ref{}, fmt.Errorf("image reference %q: want TRANSPORT:PATH, with TRANSPORT one of %s, %s, %s", s, DockerArchive, OCIArchive, OCILayout)
	}
	switch transport {
	case DockerArchive, OCIArchive, OCILayout:
	default:
		return Ref{}, fmt.Errorf("image reference %q: transport %q is not supported (use %s:FILE, %s:FILE or %s:DIR[:TAG]; no daemon or registry is contacted)", s, transport, DockerArchive, OCIArchive, OCILayout)
	}
	r := Ref{Transport: transport, Path: rest}
	if _, err := os.Stat(rest); err != nil {
		if p, tag, ok := strings.Cut(rest, ":"); ok {
			r.Path, r.Tag = p, tag
		}
	}
	if r.Path == "" {
		return Ref{}, fmt.Errorf("image reference %q: no path", s)
	}
	return r, nil
}

// Image is a container image read from a Ref.
type Image struct {
	Ref Ref
	// Name and Version are what the EIF metadata calls ImageName and
	// ImageVersion: the image's repository and tag where the source names
	// them, else the file's base name and "latest".
	Name, Version string
	// Config is the image configuration; RawConfig its bytes as stored.
	Config    *v1.ConfigFile
	RawConfig []byte

	img     v1.Image
	cleanup func()
}

// Open reads the image ref names. Close it when done.
func Open(ref Ref) (*Image, error) {
	im := &Image{Ref: ref, cleanup: func() {}}
	var err error
	switch ref.Transport {
	case DockerArchive:
		err = im.openDockerArchive()
	case OCIArchive:
		err = im.openOCIArchive()
	case OCILayout:
		err = im.openLayout(ref.Path)
	default:
		err = fmt.Errorf("transport %q is not supported", ref.Transport)
	}
	if err != nil {
		im.Close()
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	if im.RawConfig, err = im.img.RawConfigFile(); err != nil {
		im.Close()
		return nil, fmt.Errorf("image %s: reading its config: %w", ref, err)
	}
	if im.Config, err = im.img.ConfigFile(); err != nil {
		im.Close()
		return nil, fmt.Errorf("image %s: reading its config: %w", ref, err)
	}
	return im, nil
}

// Close removes what Open unpacked (an oci-archive's layout).
func (im *Image) Close() error {
	im.cleanup()
	return nil
}

func (im *Image) openDockerArchive() error {
	p := im.Ref.Path
	if _, err := os.Stat(p); err != nil {
		return err
	}
	var tag *name.Tag
	if im.Ref.Tag != "" {
		t, err := name.NewTag(im.Ref.Tag)
		if err != nil {
			return fmt.Errorf("tag %q: %w", im.Ref.Tag, err)
		}
		tag = &t
	}
	img, err := tarball.ImageFromPath(p, tag)
	if err != nil {
		return fmt.Errorf("reading %s as a docker-archive: %w", p, err)
	}
	im.img = img
	im.Name, im.Version = strings.TrimSuffix(filepath.Base(p), filepath.Ext(p)), "latest"
	repoTag := im.Ref.Tag
	if repoTag == "" {
		if m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) }); err == nil && len(m) == 1 && len(m[0].RepoTags) > 0 {
			repoTag = m[0].RepoTags[0]
		}
	}
	if repoTag != "" {
		if t, err := name.NewTag(repoTag); err == nil {
			im.Name, im.Version = t.Context().Name(), t.TagStr()
		}
	}
	return nil
}

func (im *Image) openOCIArchive() error {
	dir, err := os.MkdirTemp("", "oci-archive-")
	if err != nil {
		return err
	}
	im.cleanup = func() { os.RemoveAll(dir) }
	if err := untarLayout(im.Ref.Path, dir); err != nil {
		return err
	}
	return im.openLayout(dir)
}

// openLayout picks the image from an OCI layout: the one whose ref.name
// annotation is the tag, or the only one when no tag is given. An index
// inside (a multi-platform image) gives its linux/amd64 image.
func (im *Image) openLayout(dir string) error {
	lp, err := layout.FromPath(dir)
	if err != nil {
		return fmt.Errorf("reading %s as an OCI layout: %w", dir, err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		return fmt.Errorf("reading %s/index.json: %w", dir, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("reading %s/index.json: %w", dir, err)
	}
	var picked []v1.Descriptor
	var tags []string
	for _, d := range m.Manifests {
		t := d.Annotations[refNameAnnotation]
		tags = append(tags, fmt.Sprintf("%q", t))
		if im.Ref.Tag == "" || t == im.Ref.Tag {
			picked = append(picked, d)
		}
	}
	switch {
	case len(picked) == 0 && im.Ref.Tag != "":
		return fmt.Errorf("no image tagged %q (tags: %s)", im.Ref.Tag, strings.Join(tags, ", "))
	case len(picked) == 0:
		return fmt.Errorf("the layout holds no image")
	case len(picked) > 1:
		return fmt.Errorf("the layout holds %d images (tags: %s): name one with :TAG", len(picked), strings.Join(tags, ", "))
	}
	d := picked[0]
	if d.MediaType.IsIndex() {
		sub, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return err
		}
		sm, err := sub.IndexManifest()
		if err != nil {
			return err
		}
		found := false
		for _, sd := range sm.Manifests {
			if sd.Platform != nil && sd.Platform.OS == "linux" && sd.Platform.Architecture == "amd64" {
				d, found = sd, true
				break
			}
		}
		if !found {
			return fmt.Errorf("the multi-platform image has no linux/amd64 image")
		}
		idx = sub
	}
	if im.img, err = idx.Image(d.Digest); err != nil {
		return err
	}
	im.Name, im.Version = filepath.Base(filepath.Clean(im.Ref.Path)), "latest"
	if t := picked[0].Annotations[refNameAnnotation]; t != "" {
		im.Version = t
	}
	return nil
}

// untarLayout unpacks an oci-archive (a plain tar of a layout directory)
// into dir. Only directories and regular files at clean relative paths are
// accepted: a layout has nothing else.
func untarLayout(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s as an oci-archive: %w", archive, err)
		}
		n := path.Clean(h.Name)
		if n == "." {
			continue
		}
		if !fs.ValidPath(n) {
			return fmt.Errorf("%s: entry %q leaves the layout", archive, h.Name)
		}
		dst := filepath.Join(dir, filepath.FromSlash(n))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return fmt.Errorf("%s: entry %s: %w", archive, h.Name, err)
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: entry %s: %w", archive, h.Name, err)
			}
		default:
			return fmt.Errorf("%s: entry %s has tar type %q; an OCI layout holds only files and directories", archive, h.Name, h.Typeflag)
		}
	}
}

// Command returns Entrypoint followed by Cmd, the argv a container runtime
// runs.
func (im *Image) Command() []string {
	c := im.Config.Config
	return append(append([]string{}, c.Entrypoint...), c.Cmd...)
}

// Env returns the configured environment, KEY=VALUE each.
func (im *Image) Env() []string { return im.Config.Config.Env }

// WorkingDir returns the configured working directory ("" for none).
func (im *Image) WorkingDir() string { return im.Config.Config.WorkingDir }

// Entry is one file of the flattened root filesystem.
type Entry struct {
	Name     string // clean, relative, slash-separated ("usr/bin/app")
	Typeflag byte   // tar.TypeReg, TypeDir, TypeSymlink, TypeLink, TypeChar, TypeBlock, TypeFifo
	Mode     int64  // permission bits with setuid, setgid and sticky
	UID, GID int
	Linkname string // symlink target, or the Name of a hard link's target
	Devmajor int64
	Devminor int64
	Data     []byte // regular files only
}

// Rootfs applies the layers in order and returns the resulting files,
// sorted by name. Owners, modes, symlinks, hard links and device nodes are
// kept; times are dropped (the image builder writes none).
func (im *Image) Rootfs() ([]Entry, error) {
	rc := mutate.Extract(im.img)
	defer rc.Close()
	entries, err := readFlat(rc)
	if err != nil {
		return nil, fmt.Errorf("image %s: applying its layers: %w", im.Ref, err)
	}
	return entries, nil
}

// readFlat reads mutate.Extract's tar stream, which lists the upper layer's
// entry first and each name once.
func readFlat(r io.Reader) ([]Entry, error) {
	byName := map[string]*Entry{}
	var names []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		n := path.Clean(strings.TrimPrefix(h.Name, "/"))
		if n == "." {
			continue
		}
		if !fs.ValidPath(n) {
			return nil, fmt.Errorf("entry %q leaves the root", h.Name)
		}
		e := &Entry{Name: n, Typeflag: h.Typeflag, Mode: h.Mode & 0o7777, UID: h.Uid, GID: h.Gid}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			e.Typeflag = tar.TypeReg
			// Sized from the header (capped, so a lying header cannot make
			// us allocate what the stream does not hold), not grown by
			// doubling: images hold large files.
			buf := bytes.NewBuffer(make([]byte, 0, min(h.Size, 64<<20)))
			if _, err := io.Copy(buf, tr); err != nil {
				return nil, fmt.Errorf("%s: %w", n, err)
			}
			e.Data = buf.Bytes()
		case tar.TypeDir, tar.TypeFifo:
		case tar.TypeSymlink:
			e.Linkname = h.Linkname
		case tar.TypeLink:
			e.Linkname = path.Clean(strings.TrimPrefix(h.Linkname, "/"))
		case tar.TypeChar, tar.TypeBlock:
			e.Devmajor, e.Devminor = h.Devmajor, h.Devminor
		default:
			return nil, fmt.Errorf("%s: tar entry type %q is not supported", n, h.Typeflag)
		}
		if _, dup := byName[n]; dup {
			continue // the upper layer's entry came first
		}
		byName[n] = e
		names = append(names, n)
	}
	for _, n := range names {
		e := byName[n]
		if e.Typeflag != tar.TypeLink {
			continue
		}
		t, ok := byName[e.Linkname]
		if !ok || t.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%s is a hard link to %s, which the flattened image does not have as a regular file", n, e.Linkname)
		}
	}
	sort.Strings(names)
	out := make([]Entry, len(names))
	for i, n := range names {
		out[i] = *byName[n]
	}
	return out, nil
}
