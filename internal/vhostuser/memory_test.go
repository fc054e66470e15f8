package vhostuser

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMapMemory maps two regions sharing one memfd, the second at an
// offset that is not page-aligned, as QEMU does for large guests.
func TestMapMemory(t *testing.T) {
	fd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const size = 64 << 10
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	own, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(own)
	regions := []Region{
		{GuestPhysAddr: 0, Size: 0x1800, UserAddr: 0x7000_0000_0000, MmapOffset: 0},
		{GuestPhysAddr: 0x1_0000_0000, Size: size - 0x1800, UserAddr: 0x7000_1000_0000, MmapOffset: 0x1800},
	}
	m, err := MapMemory(regions, []int{fd, fd})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	copy(own[0x1800:], "second region")
	copy(own[0x10:], "first region")
	tests := []struct {
		name    string
		get     func() ([]byte, error)
		want    string
		wantErr string
	}{
		{"gpa in first", func() ([]byte, error) { return m.Slice(0x10, 12) }, "first region", ""},
		{"gpa in second", func() ([]byte, error) { return m.Slice(0x1_0000_0000, 13) }, "second region", ""},
		{"user address in second", func() ([]byte, error) { return m.SliceUser(0x7000_1000_0000, 13) }, "second region", ""},
		{"gap between regions", func() ([]byte, error) { return m.Slice(0x2000, 1) }, "", "outside guest memory"},
		{"crossing the first region's end", func() ([]byte, error) { return m.Slice(0x17f0, 0x20) }, "", "crosses the end"},
		{"user address unknown", func() ([]byte, error) { return m.SliceUser(0x10, 1) }, "", "outside every memory region"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.get()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want error containing %q", b, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(b) != tc.want {
				t.Fatalf("got %q, %v; want %q", b, err, tc.want)
			}
		})
	}
	// Writes through the server's mapping reach the shared file.
	b, _ := m.Slice(0x1_0000_0000, 6)
	copy(b, "SECOND")
	if got := string(own[0x1800 : 0x1800+6]); got != "SECOND" {
		t.Fatalf("write through mapping reads back %q", got)
	}
}

func TestMapMemoryRejects(t *testing.T) {
	fd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.Ftruncate(fd, 8192)
	tests := []struct {
		name string
		r    Region
		want string
	}{
		{"past the file", Region{Size: 16384}, "past the end"},
		{"empty", Region{Size: 0}, "empty"},
		{"wrapping", Region{GuestPhysAddr: ^uint64(0) - 10, Size: 4096}, "wrapping"},
		// offset+size wraps to 4096, which a plain sum let through.
		{"offset wrapping past the file", Region{Size: 8192, MmapOffset: ^uint64(0) - 4095}, "past the end"},
		{"offset past the file", Region{Size: 4096, MmapOffset: 8192}, "past the end"},
		{"implausible size", Region{Size: 1 << 50}, "implausible"},
	}
	null, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(null)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := MapMemory([]Region{tc.r}, []int{fd}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("MapMemory = %v, want error containing %q", err, tc.want)
			}
		})
	} // A device node has no size to check against (and may fault).
	if _, err := MapMemory([]Region{{Size: 4096}}, []int{null}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("MapMemory(/dev/null) = %v, want a not-a-regular-file error", err)
	}
}
