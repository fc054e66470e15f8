package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// printServiceList prints the reference's table. The STATE column is an
// addition placed last so that awk's $1..$5 stay where scripts expect them.
func printServiceList(w io.Writer, services []wire.ServiceInfo) {
	if len(services) == 0 {
		fmt.Fprintln(w, "No services found")
		return
	}
	withState := false
	for _, s := range services {
		withState = withState || s.State != ""
	}
	header := fmt.Sprintf("%-25s %-10s %-10s %-15s %s", "NAME", "ENABLED", "ACTIVE", "RESTART", "RESTARTS")
	if withState {
		header = fmt.Sprintf("%-25s %-10s %-10s %-15s %-10s %s", "NAME", "ENABLED", "ACTIVE", "RESTART", "RESTARTS", "STATE")
	}
	fmt.Fprintln(w, header)
	fmt.Fprintln(w, strings.Repeat("-", 75))
	for _, s := range services {
		enabled, active := "disabled", "inactive"
		if s.Enabled {
			enabled = "enabled"
		}
		if s.Active {
			active = "active"
		}
		if withState {
			state := s.State
			if s.Error != "" {
				state += ": " + oneLine(s.Error)
			}
			fmt.Fprintf(w, "%-25s %-10s %-10s %-15s %-10d %s\n", s.Name, enabled, active, s.RestartPolicy, s.RestartCount, state)
		} else {
			fmt.Fprintf(w, "%-25s %-10s %-10s %-15s %d\n", s.Name, enabled, active, s.RestartPolicy, s.RestartCount)
		}
	}
}

// oneLine joins the lines of a multi-line message (errors.Join's, such as
// every problem of an invalid service file) with "; ", so that it stays on
// its table row; status shows it whole.
func oneLine(msg string) string {
	var parts []string
	for _, l := range strings.Split(msg, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func printServiceStatus(w io.Writer, s *wire.ServiceStatus) {
	if s == nil {
		fmt.Fprintln(w, "(no status)")
		return
	}
	fmt.Fprintf(w, "Service: %s\n", s.Name)
	fmt.Fprintf(w, "  Enabled: %s\n", yesNo(s.Enabled))
	// The reference's two Status lines, which scripts match; our more
	// precise state (starting, failed, disabled, ...) on a line of its own.
	if s.Active {
		fmt.Fprintln(w, "  Status: active (running)")
	} else {
		fmt.Fprintln(w, "  Status: inactive (dead)")
	}
	if s.State != "" && s.State != "running" && s.State != "inactive" {
		fmt.Fprintf(w, "  State: %s\n", s.State)
	}
	if s.Error != "" {
		// Every line of a multi-line error, the later ones indented under
		// the first.
		fmt.Fprintf(w, "  Error: %s\n", strings.ReplaceAll(strings.TrimRight(s.Error, "\n"), "\n", "\n         "))
	}
	if s.StatusText != "" {
		fmt.Fprintf(w, "  Status Text: %s\n", s.StatusText)
	}
	for _, warn := range s.Warnings {
		fmt.Fprintf(w, "  Warning: %s\n", warn)
	}
	if s.PID != nil {
		fmt.Fprintf(w, "  PID: %d\n", *s.PID)
	}
	printCgroupFigures(w, s)
	fmt.Fprintf(w, "  Command: %s\n", s.ExecStart)
	if s.WorkingDirectory != nil {
		fmt.Fprintf(w, "  Working Directory: %s\n", *s.WorkingDirectory)
	}
	if s.Type != "" {
		fmt.Fprintf(w, "  Type: %s\n", s.Type)
	}
	fmt.Fprintf(w, "  Restart Policy: %s\n", s.RestartPolicy)
	if s.RestartMillis%1000 != 0 {
		fmt.Fprintf(w, "  Restart Delay: %ss\n", strconv.FormatFloat(float64(s.RestartMillis)/1000, 'f', -1, 64))
	} else {
		fmt.Fprintf(w, "  Restart Delay: %ds\n", s.RestartSec)
	}
	fmt.Fprintf(w, "  Restart Count: %d\n", s.RestartCount)
	if s.ExitStatus != nil {
		fmt.Fprintf(w, "  Last Exit Code: %d\n", *s.ExitStatus)
	}
	deps := []struct {
		label string
		list  []string
	}{
		{"After", s.Dependencies.After},
		{"Requires", s.Dependencies.Requires},
		{"Before", s.Dependencies.Before},
		{"Required By", s.Dependencies.RequiredBy},
	}
	for _, d := range deps {
		if len(d.list) > 0 {
			fmt.Fprintf(w, "  %s: %s\n", d.label, strings.Join(d.list, ", "))
		}
	}
	if s.Since > 0 {
		fmt.Fprintf(w, "  Since: %s\n", time.Unix(s.Since, 0).UTC().Format(time.RFC3339))
	}
	if s.Path != "" {
		fmt.Fprintf(w, "  File: %s\n", s.Path)
	}
	if s.ChangedOnDisk {
		fmt.Fprintln(w, "  Warning: the service file changed on disk; run 'initctl reload' to apply it")
	}
}

// printCgroupFigures shows what init read from the service's cgroup, as
// systemctl status does: "Memory: 12.3M (peak: 40M, max: 64M)", "Tasks: 3".
func printCgroupFigures(w io.Writer, s *wire.ServiceStatus) {
	if s.MemoryBytes != nil {
		var extra []string
		if s.MemoryPeakBytes != nil && *s.MemoryPeakBytes > 0 {
			extra = append(extra, "peak: "+humanKB(*s.MemoryPeakBytes/1024))
		}
		if s.MemoryMaxBytes != nil {
			extra = append(extra, "max: "+humanKB(uint64(*s.MemoryMaxBytes)/1024))
		}
		line := "  Memory: " + humanKB(*s.MemoryBytes/1024)
		if len(extra) > 0 {
			line += " (" + strings.Join(extra, ", ") + ")"
		}
		fmt.Fprintln(w, line)
	}
	if s.Tasks != nil {
		fmt.Fprintf(w, "  Tasks: %d\n", *s.Tasks)
	}
	if s.Cgroup != "" {
		fmt.Fprintf(w, "  CGroup: %s\n", s.Cgroup)
	}
}

// humanKB formats a size in KiB the way the reference's initctl does:
// 512K, 1.0M, 8.2M, 256.0M, 1.5G (one decimal from 1 MiB up; its README's
// "256M" is not what it prints).
func humanKB(kb uint64) string {
	const k = 1024
	switch {
	case kb < k:
		return fmt.Sprintf("%dK", kb)
	case kb < k*k:
		return fmt.Sprintf("%.1fM", float64(kb)/k)
	default:
		return fmt.Sprintf("%.1fG", float64(kb)/(k*k))
	}
}

// maxCommand is the widest COMMAND shown in ps list, as in the reference:
// a longer one keeps its first maxCommand-3 bytes and ends in "...".
const maxCommand = 50

// cutCommand shortens a command line for ps list, never inside a UTF-8
// character (the reference cuts bytes, and fails on such a command).
func cutCommand(cmd string) string {
	if len(cmd) <= maxCommand {
		return cmd
	}
	n := maxCommand - 3
	for n > 0 && !utf8.RuneStart(cmd[n]) {
		n--
	}
	return cmd[:n] + "..."
}

func printProcessList(w io.Writer, procs []wire.ProcessInfo) {
	if len(procs) == 0 {
		fmt.Fprintln(w, "No processes found")
		return
	}
	fmt.Fprintf(w, "%-8s %-8s %-12s %-6s %-8s %-10s %-10s %s\n", "PID", "PPID", "STATE", "CPU%", "MEM", "MANAGED", "SERVICE", "COMMAND")
	fmt.Fprintln(w, strings.Repeat("-", 100))
	for _, p := range procs {
		svc := "-"
		if p.ServiceName != nil {
			svc = *p.ServiceName
		}
		fmt.Fprintf(w, "%-8d %-8d %-12s %-6.1f %-8s %-10s %-10s %s\n", p.PID, p.PPID, wire.StateName(p.State), p.CPUPercent, humanKB(p.MemoryKB), yesNo(p.Managed), svc, cutCommand(p.Cmdline))
	}
}

func printProcessStatus(w io.Writer, p *wire.ProcessInfo) {
	if p == nil {
		fmt.Fprintln(w, "(no process)")
		return
	}
	fmt.Fprintf(w, "Process: %d\n", p.PID)
	fmt.Fprintf(w, "  Name: %s\n", p.Name)
	fmt.Fprintf(w, "  Parent PID: %d\n", p.PPID)
	fmt.Fprintf(w, "  State: %s\n", wire.StateName(p.State))
	fmt.Fprintf(w, "  Command: %s\n", p.Cmdline)
	fmt.Fprintf(w, "  CPU: %.1f%%\n", p.CPUPercent)
	fmt.Fprintf(w, "  Memory: %s\n", humanKB(p.MemoryKB))
	fmt.Fprintf(w, "  Start Time: %d\n", p.StartTime)
	fmt.Fprintf(w, "  Managed by Init: %s\n", yesNo(p.Managed))
	if p.ServiceName != nil {
		fmt.Fprintf(w, "  Service: %s\n", *p.ServiceName)
	}
	if p.ServiceMemoryBytes != nil {
		line := "  Service Memory: " + humanKB(*p.ServiceMemoryBytes/1024)
		if p.ServiceMemoryPeakBytes != nil && *p.ServiceMemoryPeakBytes > 0 {
			line += " (peak: " + humanKB(*p.ServiceMemoryPeakBytes/1024) + ")"
		}
		fmt.Fprintln(w, line)
	}
	if p.ServiceTasks != nil {
		fmt.Fprintf(w, "  Service Tasks: %d\n", *p.ServiceTasks)
	}
}

// uptime formats seconds as "2d 5h 32m 15s", leaving out leading zero units.
func uptime(secs uint64) string {
	d, h, m, s := secs/86400, secs/3600%24, secs/60%60, secs%60
	switch {
	case d > 0:
		return fmt.Sprintf("%dd %dh %dm %ds", d, h, m, s)
	case h > 0:
		return fmt.Sprintf("%dh %dm %ds", h, m, s)
	case m > 0:
		return fmt.Sprintf("%dm %ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

func printSystemStatus(w io.Writer, s *wire.SystemStatus) {
	if s == nil {
		fmt.Fprintln(w, "(no status)")
		return
	}
	fmt.Fprintln(w, "System Status")
	fmt.Fprintf(w, "  Uptime: %s\n", uptime(s.UptimeSecs))
	fmt.Fprintf(w, "  Services: %d total, %d enabled, %d active\n", s.TotalServices, s.EnabledServices, s.ActiveServices)
	fmt.Fprintf(w, "  Processes: %d total\n", s.TotalProcesses)
	fmt.Fprintf(w, "  Service Directory: %s\n", s.ServiceDir)
	fmt.Fprintf(w, "  Log Directory: %s\n", s.LogDir)
	extra := []struct{ label, v string }{
		{"Mode", s.Mode}, {"Version", s.Version}, {"Heartbeat", s.Heartbeat}, {"NSM", s.NSM},
	}
	for _, e := range extra {
		if e.v != "" {
			fmt.Fprintf(w, "  %s: %s\n", e.label, e.v)
		}
	}
	for _, m := range s.Modules {
		fmt.Fprintf(w, "  Module: %s\n", m)
	}
	if p := s.Policy; p != nil {
		fmt.Fprintf(w, "  Control Policy:\n")
		fmt.Fprintf(w, "    Unix: root, uids %s, gids %s: %s\n", ids(p.UnixUIDs, "none"), ids(p.UnixGIDs, "none"), strings.Join(p.UnixClasses, ", "))
		fmt.Fprintf(w, "    Vsock: CIDs %s: %s\n", ids(p.VsockCIDs, "any"), strings.Join(p.VsockClasses, ", "))
		fmt.Fprintf(w, "    This connection: %s\n", strings.Join(p.Caller, ", "))
	}
}

func ids(v []uint32, empty string) string {
	if len(v) == 0 {
		return empty
	}
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}
