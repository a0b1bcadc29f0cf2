package topo

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// command prepares a process to run in the host's namespace: its own
// process group (so cleanup can kill what it forks) and SIGKILL when the
// forking thread, and so the test process, dies.
func (h *Host) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), "LVSD_TOPO_HOST="+h.name)
	return cmd
}

// startIn forks cmd from a thread inside the host's namespace; the child
// inherits the namespace, with no nsenter or `ip netns exec` in between.
func (h *Host) startIn(cmd *exec.Cmd) error {
	return h.Do(cmd.Start)
}

// Run runs a program in the host's namespace and returns its combined
// output. The error names the command and includes its output.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := h.command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := h.startIn(cmd); err != nil {
		return "", fmt.Errorf("run %s: %w", name, err)
	}
	// On ctx's end, kill the whole process group, not only the leader.
	stop := context.AfterFunc(ctx, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer stop()
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return out.String(), fmt.Errorf("%s: %s %s: %w\n%s", h.name, name, strings.Join(args, " "), err, out.Bytes())
	}
	return out.String(), nil
}

// Proc is a long-running process started in a host. The topology kills it
// (and its process group) at cleanup.
type Proc struct {
	name string
	cmd  *exec.Cmd
	out  lockedBuffer
	done chan struct{}
	err  error
}

// Start starts a long-running program in the host's namespace.
func (h *Host) Start(name string, args ...string) *Proc {
	h.topo.t.Helper()
	p := &Proc{name: name, done: make(chan struct{})}
	p.cmd = h.command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	h.topo.mu.Lock()
	if h.topo.closed {
		h.topo.mu.Unlock()
		h.fatal("start %s: topology already cleaned up", name)
	}
	// Registered before the start so a concurrent cleanup cannot miss it.
	h.topo.procs = append(h.topo.procs, p)
	h.topo.mu.Unlock()
	if err := h.startIn(p.cmd); err != nil {
		close(p.done)
		h.fatal("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

// PID is the process's id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s (pid %d): %w", p.name, p.PID(), err)
	}
	return nil
}

// Kill kills the process and its process group and waits for it.
func (p *Proc) Kill() error {
	syscall.Kill(-p.PID(), syscall.SIGKILL)
	<-p.done
	return nil
}

// Wait waits for the process to exit and returns its error, or ctx's.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("wait for %s (pid %d): %w", p.name, p.PID(), ctx.Err())
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Output is everything the process wrote to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// stop is cleanup: SIGTERM to the group, SIGKILL after a grace period.
func (p *Proc) stop() {
	if p.cmd.Process == nil || p.Exited() {
		return
	}
	syscall.Kill(-p.PID(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
	syscall.Kill(-p.PID(), syscall.SIGKILL) // stragglers in the group too
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
