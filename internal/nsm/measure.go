package nsm

import (
	"fmt"
	"os"
)

// Image is what the simulator boots, for the EIF measurements.
type Image struct {
	Kernel   string   // kernel image file
	Cmdline  string   // kernel command line, measured without a trailing NUL
	Ramdisks []string // initramfs files, in boot order
}

// MeasureImage computes PCR0 (kernel ‖ cmdline ‖ every ramdisk), PCR1
// (kernel ‖ cmdline ‖ first ramdisk) and PCR2 (the other ramdisks) the way
// nitro-cli measures an EIF's sections.
func MeasureImage(img Image) (map[int]PCR, error) {
	kernel, err := os.ReadFile(img.Kernel)
	if err != nil {
		return nil, fmt.Errorf("measuring the kernel: %w", err)
	}
	if len(img.Ramdisks) == 0 {
		return nil, fmt.Errorf("measuring the image: no ramdisk given")
	}
	var disks [][]byte
	for _, r := range img.Ramdisks {
		b, err := os.ReadFile(r)
		if err != nil {
			return nil, fmt.Errorf("measuring a ramdisk: %w", err)
		}
		disks = append(disks, b)
	}
	cmd := []byte(img.Cmdline)
	all := append([][]byte{kernel, cmd}, disks...)
	return map[int]PCR{
		0: Measure(all...),
		1: Measure(kernel, cmd, disks[0]),
		2: Measure(disks[1:]...),
	}, nil
}
