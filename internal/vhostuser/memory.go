package vhostuser

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Region is one guest memory region as QEMU describes it in
// SET_MEM_TABLE: guest-physical range, the address QEMU itself maps it at,
// and where in the shared file it starts.
type Region struct {
	GuestPhysAddr uint64
	Size          uint64
	UserAddr      uint64
	MmapOffset    uint64
}

type mappedRegion struct {
	Region
	data    []byte // exactly Size bytes, starting at GuestPhysAddr
	mapping []byte // what munmap needs; nil when data is not ours to unmap
}

// Memory is the guest's RAM as seen by this process. Descriptor addresses
// are guest-physical; ring addresses from SET_VRING_ADDR are QEMU virtual
// addresses. Both are translated here, and every translation checks that
// the whole range lies inside one region, because the guest controls the
// numbers.
type Memory struct {
	regions []mappedRegion
}

// maxRegions is the vhost-user limit on regions in one SET_MEM_TABLE.
const maxRegions = 8

// MapMemory maps each region from its file descriptor. The fds stay owned
// by the caller (they may be closed right after: the mappings survive).
func MapMemory(regions []Region, fds []int) (*Memory, error) {
	if len(regions) != len(fds) {
		return nil, fmt.Errorf("memory table has %d regions but %d file descriptors", len(regions), len(fds))
	}
	if len(regions) > maxRegions {
		return nil, fmt.Errorf("memory table has %d regions, the protocol allows %d", len(regions), maxRegions)
	}
	m := &Memory{}
	page := uint64(unix.Getpagesize())
	for i, r := range regions {
		if r.Size == 0 || r.GuestPhysAddr+r.Size < r.GuestPhysAddr || r.UserAddr+r.Size < r.UserAddr {
			m.Unmap()
			return nil, fmt.Errorf("memory region %d (gpa %#x size %#x uaddr %#x): empty or wrapping range", i, r.GuestPhysAddr, r.Size, r.UserAddr)
		}
		// mmap wants a page-aligned offset; regions sharing one memfd can
		// start anywhere in it.
		base := r.MmapOffset &^ (page - 1)
		skip := r.MmapOffset - base
		length := r.Size + skip
		if r.Size > 1<<46 || length > 1<<46 {
			m.Unmap()
			return nil, fmt.Errorf("memory region %d: size %#x is implausible", i, r.Size)
		}
		// Touching a mapping beyond the end of its file raises SIGBUS,
		// which would kill the process: check the file is large enough.
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil {
			m.Unmap()
			return nil, fmt.Errorf("memory region %d: fstat fd %d: %w", i, fds[i], err)
		}
		// Only a regular file (memfd, tmpfs, hugetlbfs) has a size to
		// check; written without a sum that could wrap.
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			m.Unmap()
			return nil, fmt.Errorf("memory region %d: fd %d is not a regular file (mode %#o); use a memfd or file memory backend with share=on", i, fds[i], st.Mode)
		}
		if size := uint64(st.Size); r.MmapOffset > size || r.Size > size-r.MmapOffset {
			m.Unmap()
			return nil, fmt.Errorf("memory region %d (offset %#x size %#x) extends past the end of its %d-byte file", i, r.MmapOffset, r.Size, st.Size)
		}
		mp, err := unix.Mmap(fds[i], int64(base), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			m.Unmap()
			return nil, fmt.Errorf("mmap memory region %d (fd %d offset %#x size %#x): %w (was the memory backend created with share=on?)", i, fds[i], r.MmapOffset, r.Size, err)
		}
		m.regions = append(m.regions, mappedRegion{Region: r, data: mp[skip : skip+r.Size : skip+r.Size], mapping: mp})
	}
	return m, nil
}

// NewMemoryFromBytes wraps ordinary byte slices as guest memory, one region
// per slice, for tests of the ring code. Unmap leaves them alone.
func NewMemoryFromBytes(regions []Region, data [][]byte) (*Memory, error) {
	if len(regions) != len(data) {
		return nil, fmt.Errorf("%d regions but %d buffers", len(regions), len(data))
	}
	m := &Memory{}
	for i, r := range regions {
		if uint64(len(data[i])) != r.Size {
			return nil, fmt.Errorf("region %d: size %d but buffer has %d bytes", i, r.Size, len(data[i]))
		}
		m.regions = append(m.regions, mappedRegion{Region: r, data: data[i]})
	}
	return m, nil
}

// Unmap releases the mappings. No slice obtained from m may be used after.
func (m *Memory) Unmap() {
	if m == nil {
		return
	}
	for _, r := range m.regions {
		if r.mapping != nil {
			unix.Munmap(r.mapping)
		}
	}
	m.regions = nil
}

// Slice returns the guest memory at guest-physical addr, length n bytes.
func (m *Memory) Slice(addr, n uint64) ([]byte, error) {
	b, r, err := m.slice(addr, n, false)
	switch {
	case r == nil:
		return nil, fmt.Errorf("guest address %#x (length %#x) is outside guest memory", addr, n)
	case err != nil:
		return nil, fmt.Errorf("guest range %#x+%#x crosses the end of its memory region (%#x+%#x)", addr, n, r.GuestPhysAddr, r.Size)
	}
	return b, nil
}

// SliceUser is Slice for an address in QEMU's address space, as ring
// addresses in SET_VRING_ADDR are given.
func (m *Memory) SliceUser(uaddr, n uint64) ([]byte, error) {
	b, r, err := m.slice(uaddr, n, true)
	switch {
	case r == nil:
		return nil, fmt.Errorf("QEMU address %#x (length %#x) is outside every memory region", uaddr, n)
	case err != nil:
		return nil, fmt.Errorf("QEMU address range %#x+%#x crosses the end of its memory region", uaddr, n)
	}
	return b, nil
}

// errCrosses is slice's answer for a range that starts in a region and
// runs past its end.
var errCrosses = errors.New("range crosses the end of its memory region")

// slice returns n bytes at addr, a guest-physical address or, with user,
// one in QEMU's address space, and the region holding addr (nil if none
// does).
func (m *Memory) slice(addr, n uint64, user bool) ([]byte, *mappedRegion, error) {
	for i := range m.regions {
		r := &m.regions[i]
		start := r.GuestPhysAddr
		if user {
			start = r.UserAddr
		}
		if addr >= start && addr-start < r.Size {
			off := addr - start
			if n > r.Size-off {
				return nil, r, errCrosses
			}
			return r.data[off : off+n : off+n], r, nil
		}
	}
	return nil, nil, nil
}
