package vrrp

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// setRealtime moves every thread of the process to SCHED_RR at prio, like
// keepalived's vrrp_rt_priority, so heartbeats go out and are taken in on
// time while other processes saturate the CPUs. Threads the Go runtime
// starts later are cloned from these and inherit the policy; commands we run
// are started from a thread reset to SCHED_OTHER (startCommand).
func setRealtime(prio int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("listing threads: %w", err)
	}
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_RR, Priority: uint32(prio)}
	var errs []error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("thread %d: %w", tid, err))
		}
	}
	return errors.Join(errs...)
}

// startCommand starts cmd so that it does not inherit a realtime policy: the
// fork happens on a thread of its own, switched to SCHED_OTHER first. The
// thread is discarded afterwards (it stays locked when the goroutine ends).
func startCommand(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the runtime drops this thread
		if a, err := unix.SchedGetAttr(0, 0); err == nil && a.Policy != unix.SCHED_NORMAL {
			if err := unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}, 0); err != nil {
				errc <- fmt.Errorf("resetting scheduling policy for %s: %w", cmd.Path, err)
				return
			}
		}
		errc <- cmd.Start()
	}()
	return <-errc
}
