package ipvsdp

import (
	"context"
	"fmt"
	"time"

	"github.com/lvsd/lvsd/ipvsnl"
)

// Knobs are the IPVS sysctls lvsd manages ([ipvs] in the config). Like the
// IPVS table they are per network namespace.
type Knobs struct {
	// ExpireNodestConn expires a connection at once when its destination is
	// removed, so its client is rescheduled instead of black-holed.
	ExpireNodestConn bool
	// ExpireQuiescentTemplate expires a persistence template when its
	// destination's weight drops to 0 (drain), so sticky clients move on.
	ExpireQuiescentTemplate bool
}

// SetKnobs writes both knobs in the dataplane's namespace.
func (d *Dataplane) SetKnobs(_ context.Context, k Knobs) error {
	for _, kv := range []struct {
		name string
		on   bool
	}{{ipvsnl.SysctlExpireNodestConn, k.ExpireNodestConn}, {ipvsnl.SysctlExpireQuiescentTemplate, k.ExpireQuiescentTemplate}} {
		v := 0
		if kv.on {
			v = 1
		}
		if err := d.writer.SetSysctl(kv.name, v); err != nil {
			return fmt.Errorf("ipvsdp: %w", err)
		}
	}
	return nil
}

// Knobs reads both knobs of the dataplane's namespace.
func (d *Dataplane) Knobs(_ context.Context) (Knobs, error) {
	var k Knobs
	for _, kv := range []struct {
		name string
		dst  *bool
	}{{ipvsnl.SysctlExpireNodestConn, &k.ExpireNodestConn}, {ipvsnl.SysctlExpireQuiescentTemplate, &k.ExpireQuiescentTemplate}} {
		v, err := d.reader.Sysctl(kv.name)
		if err != nil {
			return k, fmt.Errorf("ipvsdp: %w", err)
		}
		*kv.dst = v != 0
	}
	return k, nil
}

// SyncDaemon configures one kernel connection-sync daemon; see
// ipvsnl.SyncDaemon. Zero optional fields mean the kernel defaults.
type SyncDaemon = ipvsnl.SyncDaemon

// Sync daemon roles.
const (
	SyncMaster = ipvsnl.DaemonMaster
	SyncBackup = ipvsnl.DaemonBackup
)

// SyncDaemons lists the running sync daemons.
func (d *Dataplane) SyncDaemons(ctx context.Context) ([]SyncDaemon, error) {
	ds, err := d.reader.Daemons(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipvsdp: %w", err)
	}
	return ds, nil
}

// SetSync makes the running sync daemons match want: at most one per role
// (the kernel runs a master and a backup at once when asked). A daemon
// already running as wanted is left alone, so persistence templates keep
// flowing; one running with other settings is restarted; one whose role is
// not wanted is stopped.
func (d *Dataplane) SetSync(ctx context.Context, want []SyncDaemon) error {
	running, err := d.writer.Daemons(ctx)
	if err != nil {
		return fmt.Errorf("ipvsdp: %w", err)
	}
	stop, start, err := syncPlan(running, want)
	if err != nil {
		return fmt.Errorf("ipvsdp: %w", err)
	}
	for _, s := range stop {
		if err := d.settleSync(ctx, s); err != nil {
			return fmt.Errorf("ipvsdp: stopping %s sync daemon: %w", s, err)
		}
		if err := d.writer.StopDaemon(ctx, s); err != nil {
			return fmt.Errorf("ipvsdp: %w", err)
		}
		d.log.Info("ipvsdp: stopped sync daemon", "role", s)
	}
	for _, s := range start {
		if err := d.writer.StartDaemon(ctx, s); err != nil {
			return fmt.Errorf("ipvsdp: %w", err)
		}
		d.syncMu.Lock()
		d.syncStarted[s.State] = time.Now()
		d.syncMu.Unlock()
		d.log.Info("ipvsdp: started sync daemon", "role", s.State, "interface", s.Interface, "syncid", s.SyncID)
	}
	return nil
}

// syncSettle is how long a sync daemon this Dataplane started runs before
// SetSync stops it. In the lab VM (Linux 6.1), stopping a master within a
// millisecond of starting it, before its thread had logged its start, hung
// the stop request for minutes (2 of about 15 runs on a loaded host; never
// with a pause). The pause costs nothing in normal operation, where roles
// change at failover pace.
const syncSettle = time.Second

func (d *Dataplane) settleSync(ctx context.Context, role ipvsnl.DaemonState) error {
	d.syncMu.Lock()
	started := d.syncStarted[role]
	d.syncMu.Unlock()
	wait := syncSettle - time.Since(started)
	if started.IsZero() || wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// syncPlan decides which daemons to stop and start to go from running to
// want. Zero optional fields in want accept whatever the kernel chose.
func syncPlan(running, want []SyncDaemon) (stop []ipvsnl.DaemonState, start []SyncDaemon, err error) {
	wanted := map[ipvsnl.DaemonState]SyncDaemon{}
	for _, w := range want {
		if w.State != SyncMaster && w.State != SyncBackup {
			return nil, nil, fmt.Errorf("sync daemon role %s: want master or backup", w.State)
		}
		if _, dup := wanted[w.State]; dup {
			return nil, nil, fmt.Errorf("sync daemon role %s wanted twice", w.State)
		}
		wanted[w.State] = w
	}
	have := map[ipvsnl.DaemonState]SyncDaemon{}
	for _, r := range running {
		have[r.State] = r
	}
	for _, role := range []ipvsnl.DaemonState{SyncMaster, SyncBackup} {
		r, isRunning := have[role]
		w, isWanted := wanted[role]
		switch {
		case isRunning && isWanted && syncMatches(r, w):
		case isRunning && isWanted:
			stop = append(stop, role)
			start = append(start, w)
		case isRunning:
			stop = append(stop, role)
		case isWanted:
			start = append(start, w)
		}
	}
	return stop, start, nil
}

func syncMatches(r, w SyncDaemon) bool {
	return r.Interface == w.Interface && r.SyncID == w.SyncID &&
		(w.MaxLen == 0 || r.MaxLen == w.MaxLen) &&
		(!w.Group.IsValid() || r.Group == w.Group) &&
		(w.Port == 0 || r.Port == w.Port) &&
		(w.TTL == 0 || r.TTL == w.TTL)
}
