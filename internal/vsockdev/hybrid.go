package vsockdev

import (
	"bufio"
	"errors"
	"net"
	"time"

	"github.com/nitroinit/nitroinit/internal/hvsock"
)

// The hybrid vsock host side: host clients connect to one Unix socket
// and ask for a guest port with "CONNECT <port>\n"; guest connections to
// host port N are dialled to the Unix socket HybridSocket_N.

// acceptHybrid accepts host clients on P and reads their CONNECT line.
func (d *Device) acceptHybrid() {
	defer d.recoverGo("hybrid accept")
	for {
		uc, err := d.hybrid.Accept()
		if err != nil {
			select {
			case <-d.quit:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			d.logf("vsockdev: hybrid socket %s: accept: %v", d.cfg.HybridSocket, err)
			// Out of fds and the like: back off instead of spinning.
			select {
			case <-time.After(100 * time.Millisecond):
			case <-d.quit:
				return
			}
			continue
		}
		select {
		case d.handshakes <- struct{}{}:
			go func() {
				defer func() { <-d.handshakes }()
				d.handshake(uc)
			}()
		default:
			// Each pending handshake holds a goroutine and a 64 KiB
			// buffer until its CONNECT line or ConnectTimeout.
			d.warnHybrid.Do(func() {
				d.logf("vsockdev: hybrid socket %s: %d clients have not sent their CONNECT line yet: closing new ones until they do", d.cfg.HybridSocket, maxHandshakes)
			})
			uc.Close()
		}
	}
}

func (d *Device) handshake(uc net.Conn) {
	defer d.recoverGo("hybrid handshake")
	// Close must not wait for a slow client's CONNECT line.
	read := make(chan struct{})
	defer close(read)
	go func() {
		defer d.recoverGo("hybrid handshake watcher")
		select {
		case <-d.quit:
			uc.SetReadDeadline(time.Unix(1, 0))
		case <-read:
		}
	}()
	uc.SetReadDeadline(time.Now().Add(d.cfg.ConnectTimeout))
	br := bufio.NewReaderSize(uc, readChunk)
	port, err := hvsock.ReadConnect(br)
	if err != nil {
		d.logf("vsockdev: hybrid client on %s: %v", d.cfg.HybridSocket, err)
		uc.Close()
		return
	}
	uc.SetReadDeadline(time.Time{})
	d.post(event{kind: evHostConnect, uc: uc, br: br, port: port})
}

// dial connects a guest stream to P_port on the host.
func (d *Device) dial(c *conn, port uint32) {
	defer d.recoverGo("dial")
	path := hvsock.ListenPath(d.cfg.HybridSocket, port)
	uc, err := net.DialTimeout("unix", path, d.cfg.ConnectTimeout)
	d.post(event{kind: evDialDone, c: c, uc: uc, err: err})
}
