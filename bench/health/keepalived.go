package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ensureKeepalived finds keepalived, installing Debian's package if absent.
func ensureKeepalived(ctx context.Context) (string, error) {
	if p, err := exec.LookPath("keepalived"); err == nil {
		return p, nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", errors.New("keepalived is not installed and apt-get is not available")
	}
	fmt.Println("health bench: installing keepalived (apt-get install -y keepalived)")
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "keepalived")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get install keepalived: %w\n%s", err, lastLines(out, 5))
	}
	return exec.LookPath("keepalived")
}

// keepalivedConfig is one virtual server with a TCP_CHECK per backend.
func keepalivedConfig(c config) []byte {
	secs := func(d time.Duration) int { return max(1, int(math.Ceil(d.Seconds()))) }
	var b bytes.Buffer
	fmt.Fprintf(&b, "global_defs {\n  router_id lvsd_bench\n}\n")
	fmt.Fprintf(&b, "virtual_server 198.18.1.1 %d {\n  delay_loop %d\n  lb_algo rr\n  lb_kind DR\n  protocol TCP\n", backendPort, secs(c.interval))
	for i := range c.n {
		fmt.Fprintf(&b, "  real_server %s %d {\n    weight 1\n    TCP_CHECK {\n      connect_timeout %d\n    }\n  }\n",
			backendAddr(i), backendPort, secs(c.timeout))
	}
	b.WriteString("}\n")
	return b.Bytes()
}

// runKeepalived runs keepalived's checker (-C) against the same backends
// and measures its processes from /proc. keepalived programs IPVS itself
// and exits at start-up where the kernel has no ip_vs; that error is
// returned.
func runKeepalived(ctx context.Context, c config, srv *server) (figures, error) {
	bin, err := ensureKeepalived(ctx)
	if err != nil {
		return figures{}, err
	}
	dir, err := os.MkdirTemp("", "lvsd-bench-keepalived")
	if err != nil {
		return figures{}, err
	}
	defer os.RemoveAll(dir)
	conf := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(conf, keepalivedConfig(c), 0o600); err != nil {
		return figures{}, err
	}
	var logBuf lockedBuffer
	cmd := exec.Command(bin, "--dont-fork", "--log-console", "--check", "-f", conf,
		"-p", filepath.Join(dir, "keepalived.pid"), "-c", filepath.Join(dir, "checkers.pid"))
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return figures{}, fmt.Errorf("start keepalived: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}()

	// Let it start and spread its first checks, then find the checker child.
	select {
	case err := <-exited:
		exited <- err
		return figures{}, fmt.Errorf("keepalived exited at start-up (%v): %s", err, whyExited(logBuf.Bytes()))
	case <-ctx.Done():
		return figures{}, ctx.Err()
	case <-time.After(c.warmup + c.interval):
	}
	child, err := readPID(filepath.Join(dir, "checkers.pid"))
	if err != nil {
		return figures{}, fmt.Errorf("keepalived checker pid: %w; log: %s", err, lastLines(logBuf.Bytes(), 3))
	}
	pids := []int{cmd.Process.Pid, child}
	cpu0, err := procCPU(pids)
	if err != nil {
		return figures{}, err
	}
	a0, t0 := srv.accepted(), time.Now()
	select {
	case err := <-exited:
		exited <- err
		return figures{}, fmt.Errorf("keepalived exited (%v): %s", err, whyExited(logBuf.Bytes()))
	case <-ctx.Done():
		return figures{}, ctx.Err()
	case <-time.After(c.duration):
	}
	cpu1, err := procCPU(pids)
	if err != nil {
		return figures{}, err
	}
	a1, el := srv.accepted(), time.Since(t0)
	if strings.Contains(string(logBuf.Bytes()), "IPVS: ") || a1 == a0 {
		// A large config can outlast the start-up wait before the checker
		// gives up on IPVS; what was measured then was not checking.
		return figures{}, fmt.Errorf("keepalived did not check (%d connections in %s): %s", a1-a0, el.Round(time.Second), whyExited(logBuf.Bytes()))
	}
	hwm, err := procHWM(child)
	if err != nil {
		return figures{}, err
	}
	return figures{
		acceptsPerSec: float64(a1-a0) / el.Seconds(),
		cpuPct:        100 * float64(cpu1-cpu0) / float64(el),
		peakRSSMB:     hwm,
		note:          "(checker process; keepalived counts no checks, so backend accepts stand for them)",
	}, nil
}

func readPID(path string) (int, error) {
	var raw []byte
	var err error
	for range 50 { // written shortly after the fork
		if raw, err = os.ReadFile(path); err == nil && len(bytes.TrimSpace(raw)) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(raw)))
}

// procCPU sums utime+stime of pids from /proc/PID/stat (USER_HZ = 100).
func procCPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, fmt.Errorf("read cpu of pid %d: %w", pid, err)
		}
		s := string(raw)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		// after the command: state(0) ... utime(11) stime(12)
		if len(fields) < 13 {
			return 0, fmt.Errorf("pid %d: short /proc stat", pid)
		}
		for _, f := range fields[11:13] {
			ticks, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: bad /proc stat field %q", pid, f)
			}
			total += time.Duration(ticks) * 10 * time.Millisecond
		}
	}
	return total, nil
}

// procHWM is a process's peak RSS in MB (VmHWM).
func procHWM(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: bad VmHWM %q", pid, v)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmHWM", pid)
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// whyExited picks keepalived's own explanation out of its log: the IPVS
// error when the kernel has no ip_vs, else the last lines.
func whyExited(log []byte) string {
	for _, line := range strings.Split(string(log), "\n") {
		if i := strings.Index(line, "IPVS: "); i >= 0 {
			return "it needs the kernel's ip_vs, which this kernel lacks: " + strings.TrimSpace(line[i:])
		}
	}
	return lastLines(log, 3)
}
