package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"

	"github.com/lvsd/lvsd/internal/childproc"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Override is an operator's standing instruction for one group.
type Override uint8

const (
	OverrideNone    Override = iota
	OverrideDemote           // priority 1 and hand over to any other eligible node
	OverridePromote          // priority 255 and take over regardless of preemption
	OverrideFault            // give up the group
)

func (o Override) String() string {
	return [...]string{"none", "demote", "promote", "fault"}[min(int(o), 3)]
}

// trackState is what the trackers currently say; a missing entry means
// unknown, which counts as up for scripts and services (first result decides)
// and down for interfaces (a missing interface is down).
type trackState struct {
	links    map[string]bool
	scripts  map[string]bool
	services map[string]bool
}

// effective computes a group's effective priority and fault from its spec,
// the trackers and the operator override. Weights follow keepalived: a
// negative weight is added while failing, a positive one while succeeding,
// weight 0 means fault while failing; the result is clamped to 2..254
// (Demote gives 1, Promote 255).
func effective(g *GroupSpec, scripts map[string]*TrackScriptSpec, ts trackState, o Override) (prio uint8, fault bool, reason string) {
	p := g.Priority
	var faults []string
	if !ts.links[g.Interface] {
		faults = append(faults, "interface "+g.Interface+" down")
	}
	for _, ti := range g.TrackInterface {
		if ts.links[ti.Name] {
			continue
		}
		if ti.Weight == 0 {
			faults = append(faults, "tracked interface "+ti.Name+" down")
		}
		p += ti.Weight
	}
	for _, tr := range g.TrackScript {
		w := 0
		if s := scripts[tr.Name]; s != nil {
			w = s.Weight
		}
		if tr.Weight != nil {
			w = *tr.Weight
		}
		up, known := ts.scripts[tr.Name]
		ok := up || !known
		switch {
		case !ok && w == 0:
			faults = append(faults, "track script "+tr.Name+" failing")
		case !ok && w < 0, ok && w > 0:
			p += w
		}
	}
	for _, tr := range g.TrackService {
		w := 0
		if tr.Weight != nil {
			w = *tr.Weight
		}
		if up, known := ts.services[tr.Name]; known && !up {
			if w == 0 {
				faults = append(faults, "service "+tr.Name+" lost quorum")
			}
			p += w
		}
	}
	// 1 is reserved for a demoted node, so it ranks below every other.
	p = max(2, min(254, p))
	switch o {
	case OverrideFault:
		faults = append(faults, "set by operator")
	case OverrideDemote:
		p = 1
	case OverridePromote:
		p = 255
	}
	return uint8(p), len(faults) > 0, strings.Join(faults, ", ")
}

// riseFall debounces check results: rise successes in a row make it up,
// fall failures in a row make it down; the very first result decides at once.
type riseFall struct {
	rise, fall int
	up, known  bool
	streak     int // consecutive results disagreeing with up
}

// observe records one result and reports whether the state changed.
func (r *riseFall) observe(ok bool) bool {
	if !r.known {
		r.known, r.up, r.streak = true, ok, 0
		return true
	}
	if ok == r.up {
		r.streak = 0
		return false
	}
	r.streak++
	need := r.fall
	if ok {
		need = r.rise
	}
	if r.streak >= need {
		r.up, r.streak = ok, 0
		return true
	}
	return false
}

// runScript runs a track script on its interval until ctx ends, reporting
// every debounced change (and the first result) through report.
func runScript(ctx context.Context, s *TrackScriptSpec, lg *slog.Logger, report func(name string, up bool, detail string)) {
	rf := riseFall{rise: s.Rise, fall: s.Fall}
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	for {
		out, detail := execOnce(ctx, s.Command, s.Timeout, nil)
		if ctx.Err() != nil {
			return
		}
		if detail != "" && out != "" {
			detail += ": " + out
		}
		if rf.observe(detail == "") {
			lg.Info("track script changed", "script", s.Name, "up", rf.up, "detail", detail)
			report(s.Name, rf.up, detail)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// execOnce runs argv with a timeout and returns the tail of its output and
// why it failed ("" on exit 0). The command runs through childproc: in a
// process group of its own, killed whole on timeout, when ctx ends (stop)
// and once the command has exited, and with normal scheduling even when
// this process runs SCHED_RR.
func execOnce(ctx context.Context, argv []string, timeout time.Duration, env []string) (output, why string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	var buf limitedBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := childproc.Run(cmd)
	out := buf.b
	tail := strings.TrimSpace(string(out))
	if len(tail) > 500 {
		tail = "..." + tail[len(tail)-500:]
	}
	if err == nil {
		return tail, ""
	}
	var ee *exec.ExitError
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		why = fmt.Sprintf("timeout after %v", timeout)
	case errors.As(err, &ee):
		why = fmt.Sprintf("exit status %d", ee.ExitCode())
	default:
		why = err.Error()
	}
	return tail, why
}

// limitedBuffer keeps the last 4 KiB a command wrote.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.b = append(l.b, p...)
	if len(l.b) > 4096 {
		l.b = l.b[len(l.b)-4096:]
	}
	return len(p), nil
}

// linkUp reads a link's state: administratively up and with carrier.
func linkUp(flags uint32) bool {
	return flags&unix.IFF_UP != 0 && flags&unix.IFF_RUNNING != 0
}

// readLinks returns the current state of the named interfaces.
func readLinks(names []string) map[string]bool {
	out := map[string]bool{}
	for _, n := range names {
		l, err := netlink.LinkByName(n)
		out[n] = err == nil && linkUp(l.Attrs().RawFlags)
	}
	return out
}

// watchLinks reports state changes of the named interfaces from netlink
// link notifications (no polling) until ctx ends.
func watchLinks(ctx context.Context, names []string, lg *slog.Logger, report func(name string, up bool)) error {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	ch := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		ListExisting: true,
		ErrorCallback: func(err error) {
			lg.Error("link notifications failed", "err", err)
		},
	})
	if err != nil {
		return fmt.Errorf("subscribing to link notifications: %w", err)
	}
	go func() {
		last := map[string]bool{}
		for {
			select {
			case <-ctx.Done():
				close(done) // closes the socket; netlink then closes ch
				for range ch {
				}
				return
			case u, ok := <-ch:
				if !ok {
					return
				}
				name := u.Attrs().Name
				if !want[name] {
					continue
				}
				up := u.Header.Type != unix.RTM_DELLINK && linkUp(u.IfInfomsg.Flags)
				if prev, seen := last[name]; !seen || prev != up {
					last[name] = up
					report(name, up)
				}
			}
		}
	}()
	return nil
}
