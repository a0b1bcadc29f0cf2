package childproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsd/lvsd/internal/childproc/proctest"
)

// rtChildEnv makes this test binary, started under chrt -r (every thread
// SCHED_RR from the start, as lvsd with realtime_priority), run one command
// through Run and print the policies seen instead of running the tests.
const rtChildEnv = "CHILDPROC_TEST_RT_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(rtChildEnv) != "" {
		os.Exit(runRealtimeChild())
	}
	os.Exit(m.Run())
}

// runRealtimeChild prints "parent=P child=C nonrt=N": this process's policy,
// the started command's, and how many of this process's threads run a
// policy other than SCHED_RR after the command was started (0: the thread
// that forked was switched back).
func runRealtimeChild() int {
	self, err := policyOf("/proc/self/stat")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	var out bytes.Buffer
	cmd := exec.Command("sh", "-c", "cut -d' ' -f41 /proc/self/stat")
	cmd.Stdout = &out
	if err := Run(cmd); err != nil {
		fmt.Println("run:", err)
		return 1
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	nonrt := 0
	for _, t := range tasks {
		if p, err := policyOf("/proc/self/task/" + t.Name() + "/stat"); err == nil && p != "2" {
			nonrt++
		}
	}
	fmt.Printf("parent=%s child=%s nonrt=%d\n", self, strings.TrimSpace(out.String()), nonrt)
	return 0
}

// policyOf reads the scheduling policy (field 41) from a /proc stat file.
func policyOf(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	f := strings.Fields(s[i+1:])       // f[0] is field 3
	if i < 0 || len(f) < 39 {
		return "", fmt.Errorf("%s: short stat %q", path, s)
	}
	return f[38], nil
}

// TestRunRealtimeParent: a process whose threads all run SCHED_RR starts
// commands with SCHED_OTHER (0) and keeps its own threads at SCHED_RR (2).
func TestRunRealtimeParent(t *testing.T) {
	chrt, err := exec.LookPath("chrt")
	if err != nil {
		t.Skip("chrt (util-linux) not installed")
	}
	cmd := exec.Command(chrt, "-r", "10", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), rtChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("failed to set pid")) {
			t.Skipf("realtime scheduling refused here: %s", bytes.TrimSpace(out))
		}
		t.Fatalf("%v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "parent=2 child=0 nonrt=0" {
		t.Fatalf("got %q, want parent=2 child=0 nonrt=0", got)
	}
}

// TestRunNormalParent: without realtime the command runs SCHED_OTHER too.
func TestRunNormalParent(t *testing.T) {
	var out bytes.Buffer
	cmd := exec.Command("sh", "-c", "cut -d' ' -f41 /proc/self/stat")
	cmd.Stdout = &out
	if err := Run(cmd); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != "0" {
		t.Fatalf("child policy %q, want 0", got)
	}
}

// groupScript starts sh with a background sleep that writes its pid to a
// file, then runs tail; it returns the command and a function reading the
// background child's pid.
func groupScript(t *testing.T, ctx context.Context, tail string) (*exec.Cmd, func() int) {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	cmd := exec.CommandContext(ctx, "sh", "-c", `sleep 30 & echo $! > "`+pidFile+`"; `+tail)
	return cmd, func() int {
		t.Helper()
		raw, err := os.ReadFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
		return pid
	}
}

func TestRunTimeoutKillsGroup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	cmd, childPid := groupScript(t, ctx, "sleep 30")
	start := time.Now()
	err := Run(cmd)
	if err == nil || ctx.Err() != context.DeadlineExceeded {
		t.Fatalf("got %v (ctx %v), want a failure by timeout", err, ctx.Err())
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("Run returned after %s", el)
	}
	proctest.WaitGroupGone(t, 2*time.Second, cmd.Process.Pid, childPid())
}

// TestRunCancelKillsGroup: cancelling the context (a stop) kills the group.
func TestRunCancelKillsGroup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd, childPid := groupScript(t, ctx, "sleep 30")
	time.AfterFunc(200*time.Millisecond, cancel)
	if err := Run(cmd); err == nil {
		t.Fatal("cancelled command succeeded")
	}
	proctest.WaitGroupGone(t, 2*time.Second, cmd.Process.Pid, childPid())
}

// TestRunExitZeroWithChildHoldingOutput: exit 0 is a success even though a
// background child still holds stdout; the child dies with the group and
// what was written before is kept.
func TestRunExitZeroWithChildHoldingOutput(t *testing.T) {
	cmd, childPid := groupScript(t, context.Background(), "echo done; exit 0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := Run(cmd); err != nil {
		t.Fatalf("got %v, want success", err)
	}
	if got := strings.TrimSpace(out.String()); got != "done" {
		t.Fatalf("output %q, want done", got)
	}
	proctest.WaitGroupGone(t, 2*time.Second, cmd.Process.Pid, childPid())
}

// TestRunExitNonZeroWithChildHoldingOutput: the exit status still decides.
func TestRunExitNonZeroWithChildHoldingOutput(t *testing.T) {
	cmd, childPid := groupScript(t, context.Background(), "exit 3")
	cmd.Stdout = new(bytes.Buffer)
	var ee *exec.ExitError
	if err := Run(cmd); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("got %v, want exit status 3", err)
	}
	proctest.WaitGroupGone(t, 2*time.Second, cmd.Process.Pid, childPid())
}

func TestRunStartError(t *testing.T) {
	if err := Run(exec.Command("/nonexistent/lvsd-childproc")); err == nil {
		t.Fatal("missing binary started")
	}
}
