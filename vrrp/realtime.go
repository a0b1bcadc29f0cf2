package vrrp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// setRealtime moves every thread of the process to SCHED_RR at prio, like
// keepalived's vrrp_rt_priority, so heartbeats go out on time while other
// processes saturate the CPUs. The policy is set with reset-on-fork, so
// scripts we exec (and threads the runtime starts later) run normally;
// keepRealtime re-applies it to new threads.
func setRealtime(prio int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("listing threads: %w", err)
	}
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_RR, Priority: uint32(prio),
		Flags: unix.SCHED_FLAG_RESET_ON_FORK}
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

// keepRealtime re-applies setRealtime every period until ctx ends.
func keepRealtime(ctx context.Context, prio int, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = setRealtime(prio) // the first call reported any problem
		}
	}
}
