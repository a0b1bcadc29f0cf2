package vrrp

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// setRealtime moves every thread of the process to SCHED_RR at prio, like
// keepalived's vrrp_rt_priority, so heartbeats go out and are taken in on
// time while other processes saturate the CPUs. Threads the Go runtime
// starts later are cloned from these and inherit the policy; the commands
// lvsd runs are started from a thread reset to SCHED_OTHER (childproc.Run).
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
