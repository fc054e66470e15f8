package nsm

import (
	"crypto/sha512"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// PCR is one SHA-384 platform configuration register.
type PCR [nitro.NSMDigestSize]byte

// Bank is the NSM's 32 PCRs with their lock bits. It is not safe for
// concurrent use: Module serialises access, as the device has one queue.
type Bank struct {
	value  [nitro.NSMPCRCount]PCR
	locked [nitro.NSMPCRCount]bool
}

// NewBank returns a bank holding initial (PCRs not in it are zero), with
// PCRs 0 to nitro.NSMLockedPCRs-1 locked as at an enclave's boot.
func NewBank(initial map[int]PCR) *Bank {
	b := &Bank{}
	for i, v := range initial {
		if i >= 0 && i < nitro.NSMPCRCount {
			b.value[i] = v
		}
	}
	for i := 0; i < nitro.NSMLockedPCRs; i++ {
		b.locked[i] = true
	}
	return b
}

// Describe returns PCR i and whether it is locked.
func (b *Bank) Describe(i uint16) (PCR, bool, ErrorCode) {
	if int(i) >= nitro.NSMPCRCount {
		return PCR{}, false, InvalidIndex
	}
	return b.value[i], b.locked[i], Success
}

// Extend sets PCR i to SHA-384(old ‖ data) unless it is locked.
func (b *Bank) Extend(i uint16, data []byte) (PCR, ErrorCode) {
	if int(i) >= nitro.NSMPCRCount {
		return PCR{}, InvalidIndex
	}
	if b.locked[i] {
		return PCR{}, ReadOnlyIndex
	}
	b.value[i] = ExtendPCR(b.value[i], data)
	return b.value[i], Success
}

// Lock locks PCR i; locking a locked PCR succeeds.
func (b *Bank) Lock(i uint16) ErrorCode {
	if int(i) >= nitro.NSMPCRCount {
		return InvalidIndex
	}
	b.locked[i] = true
	return Success
}

// LockRange locks PCRs [0, n).
func (b *Bank) LockRange(n uint16) ErrorCode {
	if int(n) > nitro.NSMPCRCount {
		return InvalidIndex
	}
	for i := 0; i < int(n); i++ {
		b.locked[i] = true
	}
	return Success
}

// Locked lists the locked PCRs in ascending order.
func (b *Bank) Locked() []uint16 {
	var l []uint16
	for i, v := range b.locked {
		if v {
			l = append(l, uint16(i))
		}
	}
	return l
}

// Values returns a copy of every PCR.
func (b *Bank) Values() [nitro.NSMPCRCount]PCR { return b.value }

// ExtendPCR returns SHA-384(old ‖ data), the NSM's extend operation.
func ExtendPCR(old PCR, data []byte) PCR {
	h := sha512.New384()
	h.Write(old[:])
	h.Write(data)
	var p PCR
	h.Sum(p[:0])
	return p
}

// Measure returns the EIF measurement of data given in parts (concatenated):
// SHA-384(48 zero bytes ‖ SHA-384(data)), i.e. a zero PCR extended with the
// data's digest, as nitro-cli computes PCR0, 1, 2 and 8.
func Measure(parts ...[]byte) PCR {
	h := sha512.New384()
	for _, p := range parts {
		h.Write(p)
	}
	return ExtendPCR(PCR{}, h.Sum(nil))
}
