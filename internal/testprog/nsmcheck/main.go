// Command nsmcheck is the guest side of the NSM VM test: an app that uses
// the unmodified github.com/hf/nsm client on /dev/nsm, exercises every
// request type and error case, runs 16 clients in parallel, and sends a JSON
// report with an attestation document to the host over vsock (port given by
// --port, CID 3, or 2 on the vhost-vsock route).
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/fxamacker/cbor/v2"
	"github.com/hf/nsm"
	"github.com/hf/nsm/request"
	"github.com/mdlayher/vsock"

	"github.com/nitroinit/nitroinit/internal/testprog/nsmcheck/report"
)

var (
	rep report.Report
	mu  sync.Mutex
)

func fail(format string, args ...any) {
	mu.Lock()
	defer mu.Unlock()
	rep.Failures = append(rep.Failures, fmt.Sprintf(format, args...))
}

func step() { mu.Lock(); rep.Steps++; mu.Unlock() }

func errCode(s *nsm.Session, r request.Request) string {
	res, err := s.Send(r)
	if err != nil {
		return "ioctl: " + err.Error()
	}
	return string(res.Error)
}

func main() {
	port := flag.Uint("port", 9102, "host vsock port for the report")
	pcrsOnly := flag.Bool("pcrs-only", false, "only describe PCRs 0-15 (debug-mode check)")
	attestOnly := flag.Bool("attest-only", false, "only describe PCRs 0-15 and get one attestation document (initramfs demo)")
	bench := flag.Int("bench", 0, "instead of the checks: time this many DescribePCR round trips and as many bare vsock round trips of the same sizes")
	echoPort := flag.Uint("echo-port", 9103, "with --bench: the host's echo port")
	flag.Parse()
	if *bench > 0 {
		runBench(*bench, uint32(*echoPort))
		send(uint32(*port))
		return
	}
	rep.PCRs = map[string]string{}
	s, err := nsm.OpenDefaultSession()
	if err != nil {
		fail("open /dev/nsm: %v", err)
		send(uint32(*port))
		return
	}
	for i := uint16(0); i < 16; i++ {
		res, err := s.Send(&request.DescribePCR{Index: i})
		if err != nil || res.DescribePCR == nil || !res.DescribePCR.Lock {
			fail("DescribePCR %d: %+v %v", i, res, err)
			continue
		}
		rep.PCRs[fmt.Sprint(i)] = hex.EncodeToString(res.DescribePCR.Data)
	}
	if !*pcrsOnly {
		if !*attestOnly {
			checks(s)
			parallel()
		}
		res, err := s.Send(&request.Attestation{UserData: []byte("user data"), Nonce: []byte("nonce 1"), PublicKey: []byte("public key")})
		if err != nil || res.Attestation == nil {
			fail("Attestation: %+v %v", res, err)
		} else {
			rep.Document = res.Attestation.Document
		}
	}
	send(uint32(*port))
}

func checks(s *nsm.Session) {
	d, err := s.Send(&request.DescribeNSM{})
	if err != nil || d.DescribeNSM == nil || d.DescribeNSM.MaxPCRs != 32 || d.DescribeNSM.Digest != "SHA384" || len(d.DescribeNSM.LockedPCRs) != 16 {
		fail("DescribeNSM: %+v %v", d.DescribeNSM, err)
	}
	step()
	hello, _ := hex.DecodeString("30e84b2d7eeffe6d90a475797b35e59a11b0da473eee4b3b8edfe73daf0279801bb18730c39db7f27f2f77b7b458cb9e")
	if r, err := s.Send(&request.ExtendPCR{Index: 16, Data: []byte("hello")}); err != nil || r.ExtendPCR == nil || !bytes.Equal(r.ExtendPCR.Data, hello) {
		fail("ExtendPCR 16 hello: %+v %v", r, err)
	}
	step()
	for _, tc := range []struct {
		name string
		req  request.Request
		want string
	}{
		{"extend locked PCR 0", &request.ExtendPCR{Index: 0, Data: []byte("x")}, "ReadOnlyIndex"},
		{"describe PCR 32", &request.DescribePCR{Index: 32}, "InvalidIndex"},
		{"extend PCR 32", &request.ExtendPCR{Index: 32, Data: []byte("x")}, "InvalidIndex"},
		{"lock PCR 16", &request.LockPCR{Index: 16}, ""},
		{"extend PCR 16 after lock", &request.ExtendPCR{Index: 16, Data: []byte("x")}, "ReadOnlyIndex"},
		{"lock PCRs 0-19", &request.LockPCRs{Range: 20}, ""},
		{"extend PCR 19", &request.ExtendPCR{Index: 19, Data: []byte("x")}, "ReadOnlyIndex"},
		{"lock PCRs 0-32", &request.LockPCRs{Range: 33}, "InvalidIndex"},
		{"user_data of 1025 bytes", &request.Attestation{UserData: make([]byte, 1025)}, "InputTooLarge"},
	} {
		if got := errCode(s, tc.req); got != tc.want {
			fail("%s: %q, want %q", tc.name, got, tc.want)
		}
		step()
	}
	// A 5000-byte request: the driver refuses it with EMSGSIZE.
	_, err = s.Send(&request.Attestation{UserData: make([]byte, 5000)})
	var ie *nsm.ErrorIoctlFailed
	if !errors.As(err, &ie) || ie.Errno != syscall.EMSGSIZE {
		fail("5000-byte request: %v, want EMSGSIZE", err)
	}
	step()
	rnd := make([]byte, 600)
	if n, err := s.Read(rnd); err != nil || n != 600 || bytes.Equal(rnd[:32], make([]byte, 32)) {
		fail("GetRandom via Read: %d %v", n, err)
	}
	step()
	// Another ioctl number fails with EINVAL, as in drivers/misc/nsm.c.
	f, err := os.Open("/dev/nsm")
	if err == nil {
		var buf [32]byte
		_, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), 0xC0200A01, uintptr(unsafe.Pointer(&buf[0])))
		if e != syscall.EINVAL {
			fail("ioctl 0xC0200A01: %v, want EINVAL", e)
		}
		f.Close()
	}
	if fi, err := os.Stat("/dev/nsm"); err != nil || fi.Mode().Perm() != 0o666 || fi.Mode()&os.ModeCharDevice == 0 {
		fail("/dev/nsm: %v %v, want a 0666 character device", fi.Mode(), err)
	}
	step()
}

// parallel runs 16 clients, each with its own session.
func parallel() {
	var wg sync.WaitGroup
	for c := 0; c < 16; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := nsm.OpenDefaultSession()
			if err != nil {
				fail("client %d: open: %v", c, err)
				return
			}
			defer s.Close()
			for i := 0; i < 10; i++ {
				r, err := s.Send(&request.DescribePCR{Index: uint16(i)})
				if err != nil || r.DescribePCR == nil {
					fail("client %d: DescribePCR: %+v %v", c, r, err)
					return
				}
			}
			r, err := s.Send(&request.Attestation{Nonce: []byte{byte(c)}})
			if err != nil || r.Attestation == nil {
				fail("client %d: Attestation: %+v %v", c, r, err)
			}
		}()
	}
	wg.Wait()
	step()
}

// send delivers the report, retrying while the host's listener is not up.
func send(port uint32) {
	b, _ := json.Marshal(rep)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		for _, cid := range []uint32{3, 2} {
			c, err := vsock.Dial(cid, port, nil)
			if err == nil {
				c.Write(b)
				c.Close()
				fmt.Printf("nsmcheck: report sent to %d:%d (%d failures)\n", cid, port, len(rep.Failures))
				return
			}
		}
		if time.Now().After(deadline) {
			fmt.Println("nsmcheck: no host listener for the report")
			os.Exit(1)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// runBench alternates batches of DescribePCR calls through /dev/nsm with
// batches of bare vsock round trips carrying the same request and response
// sizes (a 4-byte length, then the bytes, as the simulated device frames
// them), so that a slow spell of the machine hits both.
func runBench(n int, echoPort uint32) {
	rep.Bench = map[string][]int64{}
	s, err := nsm.OpenDefaultSession()
	if err != nil {
		fail("open /dev/nsm: %v", err)
		return
	}
	req, _ := cbor.Marshal((&request.DescribePCR{Index: 0}).Encoded())
	// The host may start its echo service after the app: retry.
	var c io.ReadWriteCloser
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		for _, cid := range []uint32{3, 2} {
			if c, err = vsock.Dial(cid, echoPort, nil); err == nil {
				break
			}
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			fail("echo port %d: %v", echoPort, err)
			return
		}
	}
	defer c.Close()
	// One CUSE round trip alone: an ioctl the device refuses in its first
	// round (EINVAL), to split the cost of the three rounds from the rest.
	dev, err := os.Open("/dev/nsm")
	if err != nil {
		fail("open /dev/nsm: %v", err)
		return
	}
	defer dev.Close()
	var arg [32]byte
	frame := make([]byte, 4+len(req))
	binary.BigEndian.PutUint32(frame, uint32(len(req)))
	copy(frame[4:], req)
	var hdr [4]byte
	resp := make([]byte, 4096)
	const batch = 50
	for done := 0; done < n; done += batch {
		for i := 0; i < batch; i++ {
			t0 := time.Now()
			if r, err := s.Send(&request.DescribePCR{Index: 0}); err != nil || r.DescribePCR == nil {
				fail("DescribePCR: %v", err)
				return
			}
			rep.Bench["describe_pcr"] = append(rep.Bench["describe_pcr"], time.Since(t0).Microseconds())
		}
		for i := 0; i < batch/10; i++ {
			t0 := time.Now()
			if r, err := s.Send(&request.Attestation{Nonce: []byte("bench")}); err != nil || r.Attestation == nil {
				fail("Attestation: %v", err)
				return
			}
			rep.Bench["attestation"] = append(rep.Bench["attestation"], time.Since(t0).Microseconds())
		}
		for i := 0; i < batch; i++ {
			// The same request as raw bytes, without the client library's
			// CBOR encoding and decoding.
			t0 := time.Now()
			raw := [4]uint64{uint64(uintptr(unsafe.Pointer(&req[0]))), uint64(len(req)), uint64(uintptr(unsafe.Pointer(&resp[0]))), uint64(len(resp))}
			if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, dev.Fd(), 0xC0200A00, uintptr(unsafe.Pointer(&raw[0]))); e != 0 {
				fail("raw DescribePCR ioctl: %v", e)
				return
			}
			rep.Bench["describe_raw"] = append(rep.Bench["describe_raw"], time.Since(t0).Microseconds())
		}
		for i := 0; i < batch; i++ {
			t0 := time.Now()
			syscall.Syscall(syscall.SYS_IOCTL, dev.Fd(), 0xC0200A01, uintptr(unsafe.Pointer(&arg[0])))
			rep.Bench["cuse_round"] = append(rep.Bench["cuse_round"], time.Since(t0).Microseconds())
		}
		for i := 0; i < batch; i++ {
			t0 := time.Now()
			if _, err := c.Write(frame); err != nil {
				fail("echo write: %v", err)
				return
			}
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				fail("echo read: %v", err)
				return
			}
			m := binary.BigEndian.Uint32(hdr[:])
			if m > uint32(len(resp)) {
				fail("echo frame of %d bytes", m)
				return
			}
			if _, err := io.ReadFull(c, resp[:m]); err != nil {
				fail("echo read: %v", err)
				return
			}
			rep.Bench["vsock"] = append(rep.Bench["vsock"], time.Since(t0).Microseconds())
		}
	}
}
