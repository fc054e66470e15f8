package enclavesim

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"sync"
)

// consoleKeep bounds the console kept in memory; console.log has all of it.
const consoleKeep = 1 << 20

// Kernel lines that say how a guest ended. They are printed at KERN_EMERG,
// so "quiet" does not hide them.
const (
	linePowerOff = "reboot: Power down"
	lineReboot   = "reboot: Restarting system"
	linePanic    = "Kernel panic - not syncing"
)

// console collects the serial console: into a file, an optional writer, and
// a bounded in-memory copy for tails, waits and the end-of-run verdict.
type console struct {
	file io.Writer
	user io.Writer

	mu     sync.Mutex
	buf    []byte
	notify chan struct{} // closed and replaced on every new line
	marks  markers
}

type markers struct {
	powerOff, reboot bool
	panic            string // the panic line
}

func newConsole(file, user io.Writer) *console {
	return &console{file: file, user: user, notify: make(chan struct{})}
}

// pump copies QEMU's stdout line by line until EOF.
func (c *console) pump(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			c.add(line)
		}
		if err != nil {
			return
		}
	}
}

func (c *console) add(line []byte) {
	// Serial consoles end lines with \r\n; keep \n only.
	clean := bytes.ReplaceAll(line, []byte("\r"), nil)
	c.file.Write(clean)
	if c.user != nil {
		c.user.Write(clean)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, clean...)
	if len(c.buf) > consoleKeep {
		c.buf = append([]byte(nil), c.buf[len(c.buf)-consoleKeep/2:]...)
	}
	s := string(clean)
	switch {
	case strings.Contains(s, linePowerOff):
		c.marks.powerOff = true
	case strings.Contains(s, lineReboot):
		c.marks.reboot = true
	case c.marks.panic == "" && strings.Contains(s, linePanic):
		c.marks.panic = strings.TrimSpace(s[strings.Index(s, linePanic):])
	}
	close(c.notify)
	c.notify = make(chan struct{})
}

func (c *console) changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.notify
}

func (c *console) markers() markers {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.marks
}

func (c *console) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.buf)
}

func (c *console) tail(n int) string {
	s := strings.TrimRight(c.all(), "\n")
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			n--
			if n == 0 {
				return s[i+1:]
			}
		}
	}
	return s
}

// LineWriter returns a writer that passes each complete line to logf, such
// as testing.T.Logf, so a test's console shows up in its log.
func LineWriter(logf func(format string, args ...any)) io.Writer {
	return &lineWriter{logf: logf}
}

type lineWriter struct {
	mu   sync.Mutex
	logf func(string, ...any)
	part []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.part = append(w.part, p...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			break
		}
		w.logf("console: %s", w.part[:i])
		w.part = w.part[i+1:]
	}
	return len(p), nil
}
