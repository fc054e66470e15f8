// Package nsmdev is the guest side of the simulated NSM: a CUSE character
// device /dev/nsm that answers NSM_IOCTL_RAW as drivers/misc/nsm.c does and
// forwards each request to the simulator on the parent over vsock, where the
// PCRs and keys live. init runs it as a separate process (argv[0] "nsm-sim")
// when the image was built with `initramfs build --nsm`.
package nsmdev

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm/cuse"
	"github.com/nitroinit/nitroinit/internal/nsm/frame"
)

// rawSize is sizeof(struct nsm_raw): two struct nsm_iovec {u64 addr, len}.
const rawSize = 32

// requestTimeout bounds one round trip to the host. The real driver waits
// up to two minutes for the device; the simulator's host answers in
// milliseconds unless it is gone.
const requestTimeout = 30 * time.Second

// Dialer connects to the host's NSM service.
type Dialer func(ctx context.Context) (net.Conn, error)

// VsockDialer dials the parent at cid:port.
func VsockDialer(cid, port uint32) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		c, err := vsock.Dial(cid, port, nil)
		if err != nil {
			return nil, fmt.Errorf("NSM simulator on the host (vsock %d:%d): %w", cid, port, err)
		}
		return c, nil
	}
}

// Forwarder sends requests to the host one at a time over one connection,
// as the real device has one queue, redialling once when it broke.
type Forwarder struct {
	dial Dialer
	mu   sync.Mutex
	conn net.Conn
}

// NewForwarder returns a Forwarder that connects with dial when needed.
func NewForwarder(dial Dialer) *Forwarder { return &Forwarder{dial: dial} }

// Forward sends one request and returns the host's answer.
func (f *Forwarder) Forward(req []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	for try := 0; try < 2; try++ {
		if f.conn == nil {
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			f.conn, err = f.dial(ctx)
			cancel()
			if err != nil {
				return nil, err
			}
		}
		var resp []byte
		f.conn.SetDeadline(time.Now().Add(requestTimeout))
		if err = frame.Write(f.conn, req); err == nil {
			resp, err = frame.Read(f.conn, nitro.NSMResponseMax)
		}
		if err == nil {
			return resp, nil
		}
		f.conn.Close()
		f.conn = nil
	}
	return nil, err
}

// Ioctl answers the rounds of one NSM_IOCTL_RAW (see docs/nsm.md): first
// the struct nsm_raw is fetched, then the request bytes with room for the
// response, then the host's answer goes back with response.len set.
func Ioctl(fwd func([]byte) ([]byte, error), io cuse.Ioctl) cuse.IoctlReply {
	if io.Cmd != nitro.NSMIoctlRaw || io.Flags&cuse.IoctlUnrestricted == 0 {
		return cuse.IoctlReply{Errno: unix.EINVAL}
	}
	arg := cuse.Iovec{Base: io.Arg, Len: rawSize}
	if len(io.In) < rawSize {
		return cuse.IoctlReply{RetryIn: []cuse.Iovec{arg}, RetryOut: []cuse.Iovec{arg}}
	}
	le := binary.LittleEndian
	reqAddr, reqLen := le.Uint64(io.In[0:]), le.Uint64(io.In[8:])
	respAddr, respLen := le.Uint64(io.In[16:]), le.Uint64(io.In[24:])
	if reqLen > nitro.NSMRequestMax {
		return cuse.IoctlReply{Errno: unix.EMSGSIZE}
	}
	if reqLen == 0 || respLen == 0 {
		return cuse.IoctlReply{Errno: unix.EINVAL}
	}
	respCap := min(respLen, nitro.NSMResponseMax)
	if uint64(len(io.In)) < rawSize+reqLen {
		return cuse.IoctlReply{
			RetryIn:  []cuse.Iovec{arg, {Base: reqAddr, Len: reqLen}},
			RetryOut: []cuse.Iovec{arg, {Base: respAddr, Len: respCap}},
		}
	}
	resp, err := fwd(io.In[rawSize : rawSize+reqLen])
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsm-sim: %v\n", err)
		return cuse.IoctlReply{Errno: unix.EIO}
	}
	if uint64(len(resp)) > respCap {
		return cuse.IoctlReply{Errno: unix.EMSGSIZE}
	}
	out := make([]byte, rawSize+len(resp))
	copy(out, io.In[:rawSize])
	le.PutUint64(out[24:], uint64(len(resp)))
	copy(out[rawSize:], resp)
	return cuse.IoctlReply{Out: out}
}

// Main runs the device until it fails; args are --cid and --port of the
// host service. It returns the process's exit status.
func Main(args []string) int {
	fs := flag.NewFlagSet(nitro.NSMSimArgv0, flag.ContinueOnError)
	cid := fs.Uint("cid", uint(nitro.ParentCID), "the parent's vsock CID")
	port := fs.Uint("port", uint(nitro.NSMSimPort), "the simulator's NSM port on the parent")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fwd := NewForwarder(VsockDialer(uint32(*cid), uint32(*port)))
	dev, err := cuse.Open("nsm", func(io cuse.Ioctl) cuse.IoctlReply { return Ioctl(fwd.Forward, io) })
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsm-sim: %v\n", err)
		return 1
	}
	// The kernel creates the node after CUSE_INIT's answer, mode 0600; the
	// real driver's is 0666.
	go func() {
		for i := 0; i < 500; i++ {
			if err := os.Chmod(nitro.NSMDevicePath, 0o666); err == nil || !errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if err := dev.Serve(); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(os.Stderr, "nsm-sim: %v\n", err)
		return 1
	}
	return 0
}
