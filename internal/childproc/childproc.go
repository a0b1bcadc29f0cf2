// Package childproc runs the processes lvsd starts (exec health checks,
// track scripts, notify scripts) so that none of them outlives its purpose
// or inherits lvsd's realtime scheduling:
//
//   - each runs in a process group of its own, killed whole when the
//     command's context ends (timeout, stop) and again once the command has
//     exited, so children it left in the background do not leak;
//   - each starts with SCHED_OTHER even when lvsd's threads run SCHED_RR
//     (vrrp's realtime_priority), so a busy script cannot starve lvsd or
//     the host.
//
// A child that leaves its process group (setsid, systemd-run) is not
// followed.
package childproc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultWaitDelay is how long Run waits, after the command has exited or
// its context has ended, for output pipes still held open by a leftover
// child, when the command sets no WaitDelay of its own.
const DefaultWaitDelay = 100 * time.Millisecond

// Run starts cmd in a new process group with normal scheduling, waits for
// it and kills whatever is left of its group. If cmd was made by
// exec.CommandContext, the whole group is killed when the context ends, not
// only the command. A command that exited 0 while a leftover child still
// held its output open succeeds: the child is killed with the group and the
// output written until WaitDelay is kept. It sets cmd.SysProcAttr.Setpgid,
// cmd.Cancel (if set) and, if zero, cmd.WaitDelay.
func Run(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pgid = 0
	if cmd.Cancel != nil { // made by exec.CommandContext
		cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	}
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = DefaultWaitDelay
	}
	if err := start(cmd); err != nil {
		return err
	}
	err := cmd.Wait()
	_ = killGroup(cmd.Process.Pid) // leftovers of the group
	// Wait reports ErrWaitDelay only when the command itself exited 0.
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState.Success() {
		err = nil
	}
	return err
}

// killGroup sends SIGKILL to the process group led by pid.
func killGroup(pid int) error {
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	return nil
}

// start starts cmd from a thread running SCHED_OTHER, so the child does not
// inherit lvsd's realtime policy (a child takes the policy and priority of
// the thread that forks it); the nice value is kept. On a thread that
// already runs SCHED_OTHER (lvsd without realtime_priority) this costs one
// sched_getattr. If the policy cannot be read, cmd starts as is.
func start(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	if !needsReset() {
		defer runtime.UnlockOSThread()
		return cmd.Start()
	}
	runtime.UnlockOSThread()
	errc := make(chan error, 1)
	go func() {
		// Switch a thread of our own to SCHED_OTHER for the fork and back
		// afterwards. A thread that cannot be switched back stays locked, so
		// the runtime drops it when this goroutine ends instead of running
		// other goroutines (heartbeats) on it with normal scheduling.
		runtime.LockOSThread()
		old, err := unix.SchedGetAttr(0, 0)
		if err != nil || old.Policy == unix.SCHED_NORMAL {
			errc <- cmd.Start()
			runtime.UnlockOSThread()
			return
		}
		normal := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Nice: old.Nice}
		if err := unix.SchedSetAttr(0, normal, 0); err != nil {
			errc <- fmt.Errorf("resetting scheduling policy for %s: %w", cmd.Path, err)
			runtime.UnlockOSThread()
			return
		}
		errc <- cmd.Start()
		old.Size = unix.SizeofSchedAttr
		if unix.SchedSetAttr(0, old, 0) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// needsReset reports whether the current thread runs a policy other than
// SCHED_OTHER.
func needsReset() bool {
	a, err := unix.SchedGetAttr(0, 0)
	return err == nil && a.Policy != unix.SCHED_NORMAL
}
