package enclavesim

import (
	"bytes"
	"fmt"
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

// serialConsole collects a VM's serial console as QEMU writes it: it splits the
// output into lines, drops the serial \r, writes each line to a file and an
// optional echo, keeps a bounded copy (the last 512 KiB to 1 MiB) for tails,
// waits and assertions, and notes the kernel lines that say how the guest
// ended (see markers). Start uses one for QEMU's stdout; harnesses that run
// QEMU themselves (hugelgupf/vmtest's qemu.WithSerialOutput) pass one as the
// serial output. It is safe for concurrent use: writers on several
// goroutines (QEMU's stdout and stderr) are serialised, though a line one
// writer has only half written may be completed by another's bytes.
type serialConsole struct {
	file io.Writer
	echo io.Writer

	mu      sync.Mutex
	partial []byte // the bytes after the last newline
	buf     []byte
	notify  chan struct{} // closed and replaced on every new line
	lines   int64         // complete lines so far
	marks   markers
}

// markers are the kernel's last words about a guest's end, as seen on its
// console.
type markers struct {
	// PowerOff: the kernel printed "reboot: Power down".
	PowerOff bool
	// Reboot: the kernel printed "reboot: Restarting system".
	Reboot bool
	// Panic is the first "Kernel panic - not syncing: ..." line, from that
	// phrase on; "" when the kernel did not panic.
	Panic string
}

// newConsole returns a Console that writes the console's lines to file
// (console.log; Close closes it when it is an io.Closer) and, when echo is
// not nil, to echo as well (such as LineWriter(t.Logf) or os.Stderr).
func newConsole(file, echo io.Writer) *serialConsole {
	return &serialConsole{file: file, echo: echo, notify: make(chan struct{})}
}

// Write takes console output in pieces of any size; each complete line is
// recorded as it arrives. It never fails.
func (c *serialConsole) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		c.addLocked(c.partial[:i+1])
		c.partial = c.partial[i+1:]
	}
	return len(p), nil
}

// Close records a last line that had no newline (with one added) and closes
// the file when it is an io.Closer. Call it once the console's writer has
// exited: what is written afterwards goes to the kept copy only.
func (c *serialConsole) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		c.addLocked(append(c.partial, '\n'))
		c.partial = nil
	}
	f, ok := c.file.(io.Closer)
	if !ok {
		return nil
	}
	// Later lines, if any, are kept in memory only.
	c.file = io.Discard
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing the console log: %w", err)
	}
	return nil
}

func (c *serialConsole) addLocked(line []byte) {
	// Serial consoles end lines with \r\n; keep \n only.
	clean := bytes.ReplaceAll(line, []byte("\r"), nil)
	c.file.Write(clean)
	if c.echo != nil {
		c.echo.Write(clean)
	}
	c.buf = append(c.buf, clean...)
	if len(c.buf) > consoleKeep {
		c.buf = append([]byte(nil), c.buf[len(c.buf)-consoleKeep/2:]...)
	}
	s := string(clean)
	switch {
	case strings.Contains(s, linePowerOff):
		c.marks.PowerOff = true
	case strings.Contains(s, lineReboot):
		c.marks.Reboot = true
	case c.marks.Panic == "" && strings.Contains(s, linePanic):
		c.marks.Panic = strings.TrimSpace(s[strings.Index(s, linePanic):])
	}
	c.lines++
	close(c.notify)
	c.notify = make(chan struct{})
}

// Lines is how many complete lines the console has printed so far: a sign
// of life for waits that follow the guest's progress (internal/wait).
func (c *serialConsole) Lines() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lines
}

// Changed returns a channel that is closed when the next line arrives.
func (c *serialConsole) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.notify
}

// markers says which of the kernel's end-of-guest lines the console has
// shown so far.
func (c *serialConsole) Markers() markers {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.marks
}

// String returns the kept console: every complete line so far, up to the
// last 1 MiB.
func (c *serialConsole) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.buf)
}

// Tail returns the last n lines of the kept console, without the final
// newline.
func (c *serialConsole) Tail(n int) string {
	s := strings.TrimRight(c.String(), "\n")
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
