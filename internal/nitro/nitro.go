// Package nitro is the one home for the numbers and names that AWS Nitro
// Enclaves fix: vsock addresses, the boot heartbeat, the NSM device and its
// ioctl, and the EIF file format's section types. Everything else in the
// project refers to these names instead of writing the values again.
package nitro

// vsock addresses.
const (
	// ParentCID is the context ID of the parent instance, as seen from an
	// enclave. It is always 3 (VMADDR_CID_HOST is 2; Nitro uses 3).
	ParentCID uint32 = 3
	// DefaultEnclaveCID is the CID nitro-cli gives the first enclave when none
	// is asked for; the simulator uses it too. Enclave CIDs are 4..2^32-2.
	DefaultEnclaveCID uint32 = 16
	// HeartbeatPort is the parent's vsock port that the enclave's init dials
	// once at boot to say it is alive.
	HeartbeatPort uint32 = 9000
	// HeartbeatByte is what init writes to the heartbeat port and expects
	// back from nitro-cli.
	HeartbeatByte byte = 0xB7
	// ControlPort is init's default vsock control port (the reference's
	// default too).
	ControlPort uint32 = 9001
)

// Files inside the enclave image.
const (
	// ConfigPath is where init reads its configuration by default.
	ConfigPath = "/etc/init.yaml"
	// CmdPath and EnvPath are the AWS bootstrap layout: one argv element per
	// line, one KEY=VALUE per line.
	CmdPath = "/cmd"
	EnvPath = "/env"
	// RootfsPath is the application root that init switches to.
	RootfsPath = "/rootfs"
)

// The NSM device (drivers/misc/nsm.c, include/uapi/linux/nsm.h).
const (
	// NSMDevicePath is the character device apps open.
	NSMDevicePath = "/dev/nsm"
	// NSMIoctlRaw is _IOWR(0x0A, 0, struct nsm_raw) with a 32-byte struct.
	NSMIoctlRaw = 0xC0200A00
	// NSMRequestMax is the largest request the driver accepts (EMSGSIZE past it).
	NSMRequestMax = 0x1000
	// NSMResponseMax is the largest response the driver returns.
	NSMResponseMax = 0x3000
	// NSMPCRCount is how many PCRs the NSM has; 0-15 are locked at boot.
	NSMPCRCount = 32
	// NSMLockedPCRs is how many of the first PCRs are locked at boot.
	NSMLockedPCRs = 16
)

// The EIF (Enclave Image File) format, as aws-nitro-enclaves-image-format
// defines it and QEMU's nitro-enclave machine loads it.
const (
	// EIFMagic opens every EIF.
	EIFMagic = ".eif"
	// EIFVersion is the format version nitro-cli writes; QEMU refuses
	// anything older.
	EIFVersion uint16 = 4
	// EIFHeaderSize is the fixed header's length in bytes.
	EIFHeaderSize = 548
	// EIFSectionHeaderSize is the length of the header before each section.
	EIFSectionHeaderSize = 12
	// EIFMaxSections is how many sections the header has room for.
	EIFMaxSections = 32
	// EIFFlagARM64 is the header flag for arm64 images; x86_64 images have 0.
	EIFFlagARM64 uint16 = 1
	// EIFDefaultMemory and EIFDefaultCPUs are what eif_build writes.
	EIFDefaultMemory uint64 = 1 << 30
	EIFDefaultCPUs   uint64 = 2
)

// EIF section types.
const (
	EIFSectionInvalid   uint16 = 0
	EIFSectionKernel    uint16 = 1
	EIFSectionCmdline   uint16 = 2
	EIFSectionRamdisk   uint16 = 3
	EIFSectionSignature uint16 = 4
	EIFSectionMetadata  uint16 = 5
)

// The simulated NSM (docs/nsm.md): the guest-side device forwards each NSM
// request to the simulator on the parent over vsock.
const (
	// NSMSimPort is the parent's vsock port the simulated /dev/nsm forwards
	// requests to. Real Nitro has no such port: its NSM is a virtio device.
	NSMSimPort uint32 = 9100
	// NSMSimMarker is the file `initramfs build --nsm` puts into an image to
	// ask init to start the simulated device; production images lack it.
	NSMSimMarker = "/etc/nitroinit/nsm-sim"
	// NSMSimArgv0 is argv[0] under which the init binary runs the simulated
	// device instead of being init.
	NSMSimArgv0 = "nsm-sim"
	// NSMFieldMax is the largest user_data, nonce or public_key an
	// Attestation request may carry, and the largest ExtendPCR data.
	NSMFieldMax = 1024
	// NSMDigestSize is the size of a SHA-384 PCR.
	NSMDigestSize = 48
)
