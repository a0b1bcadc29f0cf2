package healthcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/lvsd/lvsd/internal/childproc"
)

// execChecker is keepalived's MISC_CHECK: run a command, exit 0 = up. In
// dynamic mode (misc_dynamic) an exit status of 2..255 is also up, with
// weight status-2 (0..253); exit 0 is up with the weight left as it was; 1 and
// anything else is down. The command runs through childproc: in its own
// process group, which is killed whole on timeout and once the command has
// exited, so stray children never outlive a check (exit 0 is up even if one
// held the output open), and with normal scheduling when lvsd runs SCHED_RR.
type execChecker struct {
	timeout time.Duration
	path    string
	argv    []string
	dynamic bool
}

func newExec(s Spec) (*execChecker, error) {
	if len(s.Command) == 0 || s.Command[0] == "" {
		return nil, fieldErr("command", "exec check needs a command")
	}
	path, err := exec.LookPath(s.Command[0])
	if err != nil {
		return nil, fieldErr("command", "%v", err)
	}
	return &execChecker{timeout: s.Timeout, path: path, argv: s.Command, dynamic: s.Dynamic}, nil
}

// maxOutput bounds what is kept of the command's output for the reason.
const maxOutput = 256

type headBuffer struct{ bytes.Buffer }

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - h.Len(); room > 0 {
		h.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (c *execChecker) Check(ctx context.Context, t Target) Result {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	rep := strings.NewReplacer("${ADDRESS}", t.Addr.String(), "${PORT}", portString(t.Port))
	args := make([]string, len(c.argv)-1)
	for i, a := range c.argv[1:] {
		args[i] = rep.Replace(a)
	}
	var out headBuffer
	cmd := exec.CommandContext(ctx, c.path, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := childproc.Run(cmd)
	r := Result{Weight: NoWeight, Latency: time.Since(start)}
	if ctx.Err() == context.DeadlineExceeded {
		r.Reason = "timeout after " + c.timeout.String()
		return r
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		r.Reason = fmt.Sprintf("exec: %v", err)
		return r
	}
	if err == nil {
		r.OK = true
		return r
	}
	ws, _ := exitErr.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		r.Reason = "killed by signal " + ws.Signal().String()
	case c.dynamic && ws.ExitStatus() >= 2 && ws.ExitStatus() <= 255:
		r.OK = true
		r.Weight = ws.ExitStatus() - 2
	default:
		r.Reason = fmt.Sprintf("exit status %d", ws.ExitStatus())
		if line, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n"); line != "" {
			if len(line) > 80 {
				line = line[:80] + "…"
			}
			r.Reason += ": " + line
		}
	}
	return r
}
