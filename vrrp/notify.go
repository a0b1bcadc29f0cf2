package vrrp

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"time"
)

// serialQueue runs functions one after another on its own goroutine, so
// slow consumers (notify scripts, the daemon's event handler) never block the
// election loop. The queue is unbounded; what goes into it is rare
// (state transitions).
type serialQueue struct {
	mu      sync.Mutex
	jobs    []func(context.Context)
	wake    chan struct{}
	closed  bool
	drained chan struct{}
	// ctx is given to every job; it ends when close gives up waiting, so a
	// notify script still running then is killed, not abandoned.
	ctx    context.Context
	cancel context.CancelFunc
}

func newSerialQueue() *serialQueue {
	q := &serialQueue{wake: make(chan struct{}, 1), drained: make(chan struct{})}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	go q.run()
	return q
}

func (q *serialQueue) push(f func()) { q.pushCtx(func(context.Context) { f() }) }

// pushCtx queues a job that is given the queue's context.
func (q *serialQueue) pushCtx(f func(context.Context)) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.jobs = append(q.jobs, f)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// close lets queued jobs finish and waits for them until ctx ends.
func (q *serialQueue) close(ctx context.Context) {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	select {
	case <-q.drained:
	case <-ctx.Done():
		// Out of time: end the running job (its script's process group
		// is killed) and drop the rest.
		q.mu.Lock()
		q.jobs = nil
		q.mu.Unlock()
		q.cancel()
		select {
		case <-q.drained:
		case <-time.After(time.Second):
		}
	}
	q.cancel()
}

func (q *serialQueue) run() {
	defer close(q.drained)
	for {
		q.mu.Lock()
		jobs, closed := q.jobs, q.closed
		q.jobs = nil
		q.mu.Unlock()
		for _, f := range jobs {
			if q.ctx.Err() != nil {
				break
			}
			f(q.ctx)
		}
		if closed && len(jobs) == 0 {
			return
		}
		if len(jobs) == 0 {
			<-q.wake
		}
	}
}

// notifyCommand picks the group's notify script for a role.
func notifyCommand(g *GroupSpec, r Role) []string {
	switch r {
	case RoleMaster:
		return g.NotifyMaster
	case RoleBackup:
		return g.NotifyBackup
	case RoleFault:
		return g.NotifyFault
	case RoleStopped:
		return g.NotifyStop
	}
	return nil
}

// runNotify runs one notify script with the LVSD_* environment, bounded by
// the group's notify_timeout, and logs its outcome. Like track scripts it
// runs in a process group of its own (execOnce): at the timeout the whole
// group is killed, and children it leaves behind are killed when it exits.
func runNotify(ctx context.Context, g *GroupSpec, state, prev Role, reason string, lg *slog.Logger) {
	argv := notifyCommand(g, state)
	if len(argv) == 0 {
		return
	}
	env := append(os.Environ(),
		"LVSD_GROUP="+g.Name,
		"LVSD_STATE="+state.String(),
		"LVSD_PREV_STATE="+prev.String(),
		"LVSD_REASON="+reason,
	)
	start := time.Now()
	out, why := execOnce(ctx, argv, g.NotifyTimeout, env)
	if why != "" {
		lg.Warn("notify script failed", "group", g.Name, "state", state, "cmd", argv, "err", why, "output", out)
		return
	}
	lg.Info("notify script done", "group", g.Name, "state", state, "cmd", argv,
		"took", time.Since(start).Round(time.Millisecond), "output", out)
}
