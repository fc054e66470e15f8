package control

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// streamKey identifies a logs-stream: one per service and host port, so
// several services (or one service to several ports) can stream at once.
type streamKey struct {
	name string
	port uint32
}

type stream struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// maxStreams bounds the log streams open at once, so that a client cannot
// make init hold unbounded connections and goroutines.
const maxStreams = 32

// checkStreamTarget decides whether peer may have init dial cid for a log
// stream. A peer outside the enclave may have init dial back to the host
// (CID 2 or 3) or to itself, not to CIDs inside the enclave (1 is the
// enclave's own loopback), where a log line could reach a local listener
// such as the control port.
func (s *Server) checkStreamTarget(peer Peer, cid uint32) error {
	if peer.Transport != TransportVsock {
		return nil
	}
	if cid <= 1 || cid > 3 && !(peer.CIDKnown && cid == peer.CID) {
		return fmt.Errorf("logs-stream over vsock may only connect to the host (CID 2 or 3) or to the requesting peer's own CID, not %d", cid)
	}
	return nil
}

// startStream answers ServiceLogsStream: it subscribes to the service's
// log, dials the host's listener and leaves a goroutine writing one line per
// log line until the host goes away, the service's log ends, or
// ServiceLogsStreamStop.
func (s *Server) startStream(req wire.Request, peer Peer) wire.Response {
	if err := s.checkStreamTarget(peer, req.VsockCID); err != nil {
		return wire.Errorf("%v", err)
	}
	key := streamKey{req.Name, req.VsockPort}
	s.mu.Lock()
	_, busy := s.streams[key]
	full := len(s.streams) >= maxStreams
	s.mu.Unlock()
	if full {
		return wire.Errorf("too many log streams (%d) are active; stop one first", maxStreams)
	}
	if busy {
		return wire.Errorf("Log streaming already active for service '%s' on port %d; stop it first (logs-stream Ctrl-C sends ServiceLogsStreamStop) or use another port", req.Name, req.VsockPort)
	}
	history, sub, err := s.cfg.Handler.SubscribeLogs(req.Name, 0)
	if err != nil {
		return wire.Errorf("%v", err)
	}
	history.Close()
	dctx, dcancel := context.WithTimeout(s.ctx, s.cfg.IOTimeout)
	conn, err := s.cfg.DialVsock(dctx, req.VsockCID, req.VsockPort)
	dcancel()
	if err != nil {
		sub.Close()
		return wire.Errorf("Failed to connect to VSock %d:%d: %v (is initctl logs-stream listening there?)", req.VsockCID, req.VsockPort, err)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	st := &stream{cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	if _, busy := s.streams[key]; busy || s.ctx.Err() != nil {
		s.mu.Unlock()
		cancel()
		sub.Close()
		conn.Close()
		return wire.Errorf("Log streaming already active for service '%s' on port %d", req.Name, req.VsockPort)
	}
	s.streams[key] = st
	s.mu.Unlock()

	go func() {
		defer s.recoverPanic("log stream "+req.Name, nil)
		defer close(st.done)
		defer func() {
			s.mu.Lock()
			if s.streams[key] == st {
				delete(s.streams, key)
			}
			s.mu.Unlock()
			cancel()
			sub.Close()
			conn.Close()
		}()
		// The host never sends; a read returning means it has gone, which
		// must end the stream even while the service is quiet.
		go func() {
			defer s.recoverPanic("log stream watcher", nil)
			io.Copy(io.Discard, conn)
			cancel()
		}()
		for {
			line, missed, err := sub.Next(ctx)
			if err != nil {
				return
			}
			var out []byte
			if missed > 0 {
				out = fmt.Appendf(out, "[initctl: %d lines missed]\n", missed)
			}
			out = append(append(out, line...), '\n')
			if err := s.writeBytes(conn, out); err != nil {
				s.cfg.Logf("control: log stream of %s to %d:%d ended: %v", req.Name, req.VsockCID, req.VsockPort, err)
				return
			}
		}
	}()
	return wire.Response{Kind: wire.KindLogsStreamStarted, Service: req.Name, VsockCID: req.VsockCID, VsockPort: req.VsockPort}
}

// stopStreams ends every stream of the named service (the request names no
// port, as in the reference) and waits for them to close their connections.
// stopStreams ends the log streams of a service: all of them, or only the
// one to port when port is not zero.
func (s *Server) stopStreams(name string, port uint32) wire.Response {
	s.mu.Lock()
	var stopped []*stream
	var ports []int
	for k, st := range s.streams {
		if k.name == name && (port == 0 || k.port == port) {
			st.cancel()
			delete(s.streams, k)
			stopped = append(stopped, st)
			ports = append(ports, int(k.port))
		}
	}
	s.mu.Unlock()
	if len(stopped) == 0 {
		return wire.Errorf("No active log stream for service '%s'", name)
	}
	for _, st := range stopped {
		<-st.done
	}
	sort.Ints(ports)
	return wire.Success(fmt.Sprintf("Log streaming stopped for service '%s' (ports %v)", name, ports))
}

// ActiveStreams returns the number of logs-stream connections open now.
func (s *Server) ActiveStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// follow answers ServiceLogsFollow on the request's own connection: the last
// req.Lines lines, then every new line, each as one LogLine value followed by
// a newline, until the client closes the connection.
func (s *Server) follow(c net.Conn, req wire.Request) {
	if req.Lines < 0 {
		s.write(c, wire.Errorf("lines must not be negative, got %d", req.Lines))
		return
	}
	history, sub, err := s.cfg.Handler.SubscribeLogs(req.Name, req.Lines)
	if err != nil {
		s.write(c, wire.Errorf("%v", err))
		return
	}
	defer history.Close()
	defer sub.Close()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	c.SetReadDeadline(time.Time{})
	go func() {
		defer s.recoverPanic("follow watcher", nil)
		io.Copy(io.Discard, c)
		cancel()
	}()
	// History lines are gathered into writes of about writeChunk; live
	// ones are written as they come.
	buf := make([]byte, 0, writeChunk+1024)
	err = history.Each(func(line []byte) error {
		buf = appendLogLine(buf, line, 0)
		if len(buf) < writeChunk {
			return nil
		}
		err := s.writeBytes(c, buf)
		buf = buf[:0]
		return err
	})
	if err != nil || s.writeBytes(c, buf) != nil {
		return
	}
	send := func(line string, missed uint64) error {
		buf = appendLogLine(buf[:0], []byte(line), missed)
		return s.writeBytes(c, buf)
	}
	for {
		line, missed, err := sub.Next(ctx)
		if err != nil {
			if ctx.Err() == nil {
				// The log ended (service removed): say so, then close.
				s.writeBytes(c, append(mustJSON(wire.Errorf("log of '%s' ended: %v", req.Name, err)), '\n'))
			}
			return
		}
		if err := send(line, missed); err != nil {
			return
		}
	}
}

func mustJSON(r wire.Response) []byte {
	b, _ := json.Marshal(r)
	return b
}

// appendLogLine appends one LogLine event and its newline, the bytes
// json.Marshal of the wire.Response would give.
func appendLogLine(b, line []byte, missed uint64) []byte {
	b = append(b, `{"`+wire.KindLogLine+`":{"line":`...)
	b = wire.AppendString(b, line)
	b = append(b, `,"missed":`...)
	b = strconv.AppendUint(b, missed, 10)
	return append(b, "}}\n"...)
}
