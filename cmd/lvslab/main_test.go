package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childPIDs lists the children of every thread of pid.
func childPIDs(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func gone(pid int) bool {
	for i := 0; i < 100; i++ {
		if err := syscall.Kill(pid, 0); err != nil {
			return true
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(b), ") Z ") {
			return true // dead, waiting to be reaped by init
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// TestVMDiesWithLvslab boots real VMs (setting the lab up first if needed)
// and checks that neither Ctrl-C nor SIGKILL of lvslab leaves qemu behind.
func TestVMDiesWithLvslab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (qemu, apt-get); CI runs as root")
	}
	bin := filepath.Join(t.TempDir(), "lvslab")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build lvslab: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "setup").CombinedOutput(); err != nil {
		t.Fatalf("lvslab setup: %v\n%s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "run", "--", "sh", "-c", "echo guest-up; exec sleep 600")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			sc := bufio.NewScanner(stdout)
			up := false
			for sc.Scan() {
				if sc.Text() == "guest-up" {
					up = true
					break
				}
			}
			if !up {
				cmd.Wait()
				t.Fatalf("guest never ran the command; stderr:\n%s", stderr.String())
			}
			var qemu []int
			for _, c := range childPIDs(cmd.Process.Pid) {
				if strings.HasPrefix(comm(c), "qemu-system") {
					qemu = append(qemu, c)
				}
			}
			if len(qemu) != 1 {
				t.Fatalf("want one qemu child of lvslab, found %v", qemu)
			}
			start := time.Now()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			go func() {
				for sc.Scan() {
				}
			}()
			err = cmd.Wait()
			if err == nil {
				t.Errorf("lvslab exited 0 after %v", sig)
			}
			if !gone(qemu[0]) {
				t.Fatalf("qemu %d still running %v after lvslab got %v", qemu[0], time.Since(start), sig)
			}
			t.Logf("%v: lvslab exited (%v), qemu gone within %v", sig, err, time.Since(start).Round(time.Millisecond))
		})
	}
}
