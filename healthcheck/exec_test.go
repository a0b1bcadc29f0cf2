package healthcheck

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// script writes an executable shell script and returns its path.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "check.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

var execTarget = Target{Addr: netip.MustParseAddr("198.18.2.1"), Port: 8080}

func TestExecCheck(t *testing.T) {
	cases := []struct {
		name    string
		body    string
		dynamic bool
		ok      bool
		weight  int
		reason  string
	}{
		{"exit 0", "exit 0", false, true, NoWeight, ""},
		{"exit 1", "exit 1", false, false, NoWeight, "exit status 1"},
		{"exit 1 with output", "echo 'db unreachable' >&2; echo more; exit 1", false, false, NoWeight, "exit status 1: db unreachable"},
		{"exit 7 static", "exit 7", false, false, NoWeight, "exit status 7"},
		{"dynamic exit 0 keeps weight", "exit 0", true, true, NoWeight, ""},
		{"dynamic exit 1 is down", "exit 1", true, false, NoWeight, "exit status 1"},
		{"dynamic exit 2 is weight 0", "exit 2", true, true, 0, ""},
		{"dynamic exit 7 is weight 5", "exit 7", true, true, 5, ""},
		{"dynamic exit 255 is weight 253", "exit 255", true, true, 253, ""},
		{"killed by signal", "kill -TERM $$", false, false, NoWeight, "killed by signal terminated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mustNew(t, Spec{Type: TypeExec, Command: []string{script(t, c.body)}, Dynamic: c.dynamic}).
				Check(context.Background(), execTarget)
			if r.OK != c.ok || r.Weight != c.weight || r.Reason != c.reason {
				t.Fatalf("got ok=%v weight=%d reason=%q, want ok=%v weight=%d reason=%q",
					r.OK, r.Weight, r.Reason, c.ok, c.weight, c.reason)
			}
		})
	}
}

func TestExecSubstitution(t *testing.T) {
	out := filepath.Join(t.TempDir(), "args")
	p := script(t, `printf '%s|' "$@" > "`+out+`"`)
	c := mustNew(t, Spec{Type: TypeExec, Command: []string{p, "--addr=${ADDRESS}", "${PORT}", "${OTHER}", "x${ADDRESS}:${PORT}y"}})
	if r := c.Check(context.Background(), execTarget); !r.OK {
		t.Fatalf("got %+v", r)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := "--addr=198.18.2.1|8080|${OTHER}|x198.18.2.1:8080y|"; string(got) != want {
		t.Fatalf("args %q, want %q", got, want)
	}
}

// TestExecTimeoutKillsGroup: on timeout the whole process group dies,
// including a background child that would otherwise outlive the check.
func TestExecTimeoutKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	p := script(t, `sleep 30 & echo $! > "`+pidFile+`"; sleep 30`)
	start := time.Now()
	r := mustNew(t, Spec{Type: TypeExec, Command: []string{p}, Timeout: 300 * time.Millisecond}).
		Check(context.Background(), execTarget)
	if r.OK || r.Reason != "timeout after 300ms" {
		t.Fatalf("got %+v, want timeout after 300ms", r)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("check returned after %s; the timeout did not kill the script", el)
	}
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if !eventuallyDead(pid, 2*time.Second) {
		t.Fatalf("background child %d survived the timeout", pid)
	}
}

// TestExecExitKillsLeftovers: a script that exits leaving a child behind
// does not leak it.
func TestExecExitKillsLeftovers(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	p := script(t, `sleep 30 >/dev/null 2>&1 & echo $! > "`+pidFile+`"; exit 0`)
	if r := mustNew(t, Spec{Type: TypeExec, Command: []string{p}}).Check(context.Background(), execTarget); !r.OK {
		t.Fatalf("got %+v", r)
	}
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if !eventuallyDead(pid, 2*time.Second) {
		t.Fatalf("leftover child %d still running", pid)
	}
}

// TestExecExitZeroWithChildHoldingOutput: a check that exits 0 while a
// background child still holds its stdout is up, and the child is killed.
func TestExecExitZeroWithChildHoldingOutput(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	p := script(t, `sleep 30 & echo $! > "`+pidFile+`"; exit 0`)
	if r := mustNew(t, Spec{Type: TypeExec, Command: []string{p}}).Check(context.Background(), execTarget); !r.OK || r.Reason != "" {
		t.Fatalf("got %+v, want up", r)
	}
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if !eventuallyDead(pid, 2*time.Second) {
		t.Fatalf("leftover child %d still running", pid)
	}
}

// rtCheckEnv makes this test binary, started under chrt -r (every thread
// SCHED_RR, as lvsd with realtime_priority), run one exec check and print
// its result instead of running the tests.
const rtCheckEnv = "HEALTHCHECK_TEST_RT_CHECK"

func TestMain(m *testing.M) {
	if os.Getenv(rtCheckEnv) != "" {
		os.Exit(runRealtimeCheck())
	}
	os.Exit(m.Run())
}

// runRealtimeCheck runs a dynamic exec check whose exit status is 2 + its
// scheduling policy (field 41 of /proc/PID/stat) and prints
// "parent=P child=W": this process's policy and the check's weight, which
// is the policy the check ran with.
func runRealtimeCheck() int {
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	dir, err := os.MkdirTemp("", "rtcheck")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "check.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\nexit $(( $(cut -d' ' -f41 /proc/self/stat) + 2 ))\n"), 0o755); err != nil {
		fmt.Println(err)
		return 1
	}
	c, err := newExec(Spec{Type: TypeExec, Command: []string{p}, Dynamic: true, Timeout: 5 * time.Second})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	r := c.Check(context.Background(), execTarget)
	if !r.OK {
		fmt.Println("check failed:", r.Reason)
		return 1
	}
	fmt.Printf("parent=%s child=%d\n", strings.Fields(string(self[bytes.LastIndexByte(self, ')')+1:]))[38], r.Weight)
	return 0
}

// TestExecRealtimeNotInherited: exec checks run SCHED_OTHER (0) although the
// process starting them runs SCHED_RR (2).
func TestExecRealtimeNotInherited(t *testing.T) {
	chrt, err := exec.LookPath("chrt")
	if err != nil {
		t.Skip("chrt (util-linux) not installed")
	}
	cmd := exec.Command(chrt, "-r", "10", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), rtCheckEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("failed to set pid")) {
			t.Skipf("realtime scheduling refused here: %s", bytes.TrimSpace(out))
		}
		t.Fatalf("%v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "parent=2 child=0" {
		t.Fatalf("got %q, want parent=2 child=0", got)
	}
}

// eventuallyDead reports whether pid is gone or a zombie within d.
func eventuallyDead(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// state is the field after the ")" closing the command name
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func TestExecSpecErrors(t *testing.T) {
	for _, s := range []Spec{
		{Type: TypeExec},
		{Type: TypeExec, Command: []string{""}},
		{Type: TypeExec, Command: []string{"/nonexistent/check"}},
		{Type: TypeExec, Command: []string{"no-such-command-lvsd"}},
	} {
		err := s.Validate()
		fes := FieldErrors(err)
		if len(fes) != 1 || fes[0].Field != "command" {
			t.Errorf("%v: got %v, want one error on command", s.Command, err)
		}
	}
}
