package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// cannedInit answers each request with the JSON given for its kind, as an
// init (ours or the reference) would; it stands in for situations a real
// init cannot be put in, such as an empty process list.
func cannedInit(t *testing.T, answers map[string]string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "init.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// As init does: one value, read without waiting for EOF.
			if raw, err := wire.ReadValue(c, wire.MaxRequestSize); err == nil {
				var req wire.Request
				answer, ok := `{"Error":{"message":"canned: bad request"}}`, false
				if req.UnmarshalJSON(raw) == nil {
					answer, ok = answers[req.Kind]
				}
				if !ok {
					answer = `{"Error":{"message":"canned: no answer for ` + req.Kind + `"}}`
				}
				c.Write([]byte(answer))
			}
			c.Close()
		}
	}()
	return sock
}

// TestReferenceOutput checks initctl's rendering of answers against the
// reference initctl's exact output for the same answers.
func TestReferenceOutput(t *testing.T) {
	long := "/usr/bin/postgres -D /var/lib/postgresql/data -c config_file=/etc/postgresql.conf"
	tests := []struct {
		name    string
		args    []string
		answers map[string]string
		stdout  string
		stderr  string
		code    int
	}{
		{
			name: "no services", args: []string{"list"},
			answers: map[string]string{"ListServices": `{"ServiceList":{"services":[]}}`},
			stdout:  "No services found\n",
		},
		{
			name: "no logs", args: []string{"logs", "web"},
			answers: map[string]string{"ServiceLogs": `{"ServiceLogs":{"logs":[]}}`},
			stdout:  "No logs available\n",
		},
		{
			name: "no processes", args: []string{"ps", "list"},
			answers: map[string]string{"ProcessList": `{"ProcessList":{"processes":[]}}`},
			stdout:  "No processes found\n",
		},
		{
			// MEM always has one decimal from 1 MiB up; COMMAND is cut to
			// 47 bytes and "..." past 50.
			name: "ps list memory and command width", args: []string{"ps", "list"},
			answers: map[string]string{"ProcessList": `{"ProcessList":{"processes":[
				{"pid":124,"ppid":1,"name":"postgres","cmdline":"` + long + `","state":"S","cpu_percent":1.2,"memory_kb":1024,"start_time":1,"managed":true,"service_name":"database"},
				{"pid":200,"ppid":1,"name":"bash","cmdline":"bash","state":"R","cpu_percent":0.0,"memory_kb":262144,"start_time":1,"managed":false,"service_name":null},
				{"pid":201,"ppid":1,"name":"tiny","cmdline":"tiny","state":"S","cpu_percent":0.0,"memory_kb":512,"start_time":1,"managed":false,"service_name":null}]}}`},
			stdout: "PID      PPID     STATE        CPU%   MEM      MANAGED    SERVICE    COMMAND\n" + strings.Repeat("-", 100) + "\n" +
				"124      1        Sleeping     1.2    1.0M     yes        database   " + long[:47] + "...\n" +
				"200      1        Running      0.0    256.0M   no         -          bash\n" +
				"201      1        Sleeping     0.0    512K     no         -          tiny\n",
		},
		{
			name: "ps status memory", args: []string{"ps", "status", "124"},
			answers: map[string]string{"ProcessStatus": `{"ProcessStatus":{"process":{"pid":124,"ppid":1,"name":"postgres","cmdline":"` + long + `","state":"S","cpu_percent":2.5,"memory_kb":1572864,"start_time":1234567890,"managed":true,"service_name":"database"}}}`},
			stdout:  "Process: 124\n  Name: postgres\n  Parent PID: 1\n  State: Sleeping\n  Command: " + long + "\n  CPU: 2.5%\n  Memory: 1.5G\n  Start Time: 1234567890\n  Managed by Init: yes\n  Service: database\n",
		},
		{
			name: "enable --now whose start fails", args: []string{"enable", "--now", "web"},
			answers: map[string]string{
				"ServiceEnable": `{"Success":{"message":"Service 'web' enabled"}}`,
				"ServiceStart":  `{"Error":{"message":"Service 'web' is already running"}}`,
			},
			stdout: "✓ Service 'web' enabled\n",
			stderr: "✗ Error starting service: Service 'web' is already running\n",
			code:   1,
		},
		{
			name: "enable --now whose enable fails", args: []string{"enable", "--now", "web"},
			answers: map[string]string{"ServiceEnable": `{"Error":{"message":"Failed to enable service 'web': Service file not found"}}`},
			stderr:  "✗ Error: Failed to enable service 'web': Service file not found\n",
			code:    1,
		},
		{
			// An invalid file's problems, one per line in the answer, stay
			// on the service's row in list.
			name: "multi-line error in list", args: []string{"list"},
			answers: map[string]string{"ListServices": `{"ServiceList":{"services":[
				{"name":"bad","enabled":false,"active":false,"restart_policy":"","restart_count":0,"state":"invalid","error":"bad.service:1: Restart: no\nbad.service:2: Type: no"},
				{"name":"web","enabled":true,"active":true,"restart_policy":"always","restart_count":1,"state":"running"}]}}`},
			stdout: "NAME                      ENABLED    ACTIVE     RESTART         RESTARTS   STATE\n" + strings.Repeat("-", 75) + "\n" +
				"bad                       disabled   inactive                   0          invalid: bad.service:1: Restart: no; bad.service:2: Type: no\n" +
				"web                       enabled    active     always          1          running\n",
		},
		{
			name: "multi-line error in status", args: []string{"status", "bad"},
			answers: map[string]string{"ServiceStatus": `{"ServiceStatus":{"status":{"name":"bad","enabled":false,"active":false,"pid":null,"exec_start":"","working_directory":null,"restart_policy":"","restart_sec":0,"restart_count":0,"exit_status":null,"dependencies":{"before":[],"after":[],"requires":[],"required_by":[]},"state":"invalid","error":"bad.service:1: Restart: no\nbad.service:2: Type: no"}}}`},
			stdout:  "Service: bad\n  Enabled: no\n  Status: inactive (dead)\n  State: invalid\n  Error: bad.service:1: Restart: no\n         bad.service:2: Type: no\n  Command: \n  Restart Policy: \n  Restart Delay: 0s\n  Restart Count: 0\n",
		},
		{
			name: "stopped service status", args: []string{"status", "web"},
			answers: map[string]string{"ServiceStatus": `{"ServiceStatus":{"status":{"name":"web","enabled":true,"active":false,"pid":null,"exec_start":"/bin/web","working_directory":null,"restart_policy":"no","restart_sec":5,"restart_count":1,"exit_status":0,"dependencies":{"before":[],"after":[],"requires":[],"required_by":[]},"state":"inactive"}}}`},
			stdout:  "Service: web\n  Enabled: yes\n  Status: inactive (dead)\n  Command: /bin/web\n  Restart Policy: no\n  Restart Delay: 5s\n  Restart Count: 1\n  Last Exit Code: 0\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := cannedInit(t, tt.answers)
			r := initctl(t, nil, append([]string{"-s", sock}, tt.args...)...)
			if r.stdout != tt.stdout || r.stderr != tt.stderr || r.code != tt.code {
				t.Errorf("initctl %s:\nstdout %q\nstderr %q\nexit %d\nwant\nstdout %q\nstderr %q\nexit %d",
					strings.Join(tt.args, " "), r.stdout, r.stderr, r.code, tt.stdout, tt.stderr, tt.code)
			}
		})
	}
}

func TestCutCommand(t *testing.T) {
	for in, want := range map[string]string{
		strings.Repeat("a", 50):         strings.Repeat("a", 50),
		strings.Repeat("a", 51):         strings.Repeat("a", 47) + "...",
		strings.Repeat("a", 46) + "ééé": strings.Repeat("a", 46) + "...", // é is 2 bytes: not cut inside it
	} {
		if got := cutCommand(in); got != want {
			t.Errorf("cutCommand(%q) = %q, want %q", in, got, want)
		}
	}
}
