package vrrp

// Track and notify scripts run in a process group of their own: a script's
// background children die with it on timeout, on stop and after it exits.

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lvsd/lvsd/internal/childproc/proctest"
)

// spawner returns a shell command that records its own pid (the process
// group) and a background sleep's pid, then runs tail; pids waits for both
// files and returns them, and kills both at cleanup in any case.
func spawner(t *testing.T, tail string) (argv []string, pids func() (pgid, child int)) {
	t.Helper()
	dir := t.TempDir()
	self, child := filepath.Join(dir, "self.pid"), filepath.Join(dir, "child.pid")
	argv = []string{"sh", "-c", `echo $$ > "` + self + `"; sleep 30 & echo $! > "` + child + `"; ` + tail}
	read := func(p string) int {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if raw, err := os.ReadFile(p); err == nil && bytes.HasSuffix(raw, []byte("\n")) {
				pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
				return pid
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never written", p)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return argv, func() (int, int) { return read(self), read(child) }
}

func TestTrackScriptTimeoutKillsGroup(t *testing.T) {
	argv, pids := spawner(t, "sleep 30")
	s := &TrackScriptSpec{Name: "chk", Command: argv, Interval: time.Hour, Timeout: 300 * time.Millisecond, Rise: 1, Fall: 1}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type report struct {
		up     bool
		detail string
	}
	got := make(chan report, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runScript(ctx, s, discardLogger(), func(_ string, up bool, detail string) { got <- report{up, detail} })
	}()
	defer func() { cancel(); <-done }()
	select {
	case r := <-got:
		if r.up || r.detail != "timeout after 300ms" {
			t.Fatalf("got up=%v detail=%q, want down by timeout after 300ms", r.up, r.detail)
		}
	case <-ctx.Done():
		t.Fatal("no report")
	}
	pgid, child := pids()
	proctest.WaitGroupGone(t, 2*time.Second, pgid, child)
}

// TestTrackScriptStopKillsGroup: stopping the tracker (ctx ends) while a
// script hangs kills its whole group at once, not at the timeout.
func TestTrackScriptStopKillsGroup(t *testing.T) {
	argv, pids := spawner(t, "sleep 30")
	s := &TrackScriptSpec{Name: "chk", Command: argv, Interval: time.Hour, Timeout: time.Minute, Rise: 1, Fall: 1}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		runScript(ctx, s, discardLogger(), func(string, bool, string) { t.Error("reported a result after stop") })
	}()
	pgid, child := pids() // the script is running
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("runScript did not return after stop")
	}
	proctest.WaitGroupGone(t, 2*time.Second, pgid, child)
}

// TestTrackScriptExitZeroWithChildHoldingOutput: a script that exits 0 and
// leaves a child holding its stdout is up, and the child is killed.
func TestTrackScriptExitZeroWithChildHoldingOutput(t *testing.T) {
	argv, pids := spawner(t, "echo fine; exit 0")
	out, why := execOnce(context.Background(), argv, 5*time.Second, nil)
	if why != "" || out != "fine" {
		t.Fatalf("got output %q why %q, want success with output fine", out, why)
	}
	pgid, child := pids()
	proctest.WaitGroupGone(t, 2*time.Second, pgid, child)
}

// logBuffer is a logger whose text output tests can read.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestNotifyTimeoutKillsGroup(t *testing.T) {
	argv, pids := spawner(t, "sleep 30")
	g := &GroupSpec{Name: "web", NotifyTimeout: 300 * time.Millisecond, NotifyMaster: argv}
	var logs logBuffer
	start := time.Now()
	runNotify(context.Background(), g, RoleMaster, RoleBackup, "test", slog.New(slog.NewTextHandler(&logs, nil)))
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("runNotify returned after %v", el)
	}
	if l := logs.String(); !strings.Contains(l, "notify script failed") || !strings.Contains(l, "timeout after 300ms") {
		t.Fatalf("log %q, want a failure by timeout after 300ms", l)
	}
	pgid, child := pids()
	proctest.WaitGroupGone(t, 2*time.Second, pgid, child)
}

func TestNotifyExitZeroWithChildHoldingOutput(t *testing.T) {
	argv, pids := spawner(t, "exit 0")
	g := &GroupSpec{Name: "web", NotifyTimeout: 5 * time.Second, NotifyMaster: argv}
	var logs logBuffer
	runNotify(context.Background(), g, RoleMaster, RoleBackup, "test", slog.New(slog.NewTextHandler(&logs, nil)))
	if l := logs.String(); !strings.Contains(l, "notify script done") {
		t.Fatalf("log %q, want notify script done", l)
	}
	pgid, child := pids()
	proctest.WaitGroupGone(t, 2*time.Second, pgid, child)
}

// TestNotifyKilledWhenStopRunsOut: a notify script still running when
// Stop's deadline passes is killed with its process group, not left
// running (its own timeout is far away).
func TestNotifyKilledWhenStopRunsOut(t *testing.T) {
	argv, pids := spawner(t, "sleep 30")
	g := &GroupSpec{Name: "web", NotifyTimeout: time.Minute, NotifyStop: argv}
	q := newSerialQueue()
	q.pushCtx(func(ctx context.Context) { runNotify(ctx, g, RoleStopped, RoleMaster, "stopping", discardLogger()) })
	pgid, child := pids() // the script runs
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	q.close(ctx)
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("close returned after %v", el)
	}
	proctest.WaitGroupGone(t, 2*time.Second, pgid, child)
}
