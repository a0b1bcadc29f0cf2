// Package daemon runs lvsd: it wires the config to the director (desired
// state = config ∘ operator overrides ∘ health), the health checks, the VIP
// election, the control API and metrics, and handles reloads. All mutable
// state is owned by one loop goroutine; everything else talks to it through
// closures run on that loop.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/fwmark"
	"github.com/lvsd/lvsd/director/ipvsdp"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/healthcheck/policy"
	"github.com/lvsd/lvsd/internal/atomicfile"
	"github.com/lvsd/lvsd/metrics"
	"github.com/lvsd/lvsd/opstate"
	"github.com/lvsd/lvsd/vrrp"
)

// Options configure Run.
type Options struct {
	ConfigPath string
	Log        *slog.Logger
	// Witness runs a voting cluster member that holds no VIP and no services.
	Witness bool
	// Reload delivers reload requests (SIGHUP).
	Reload <-chan struct{}
	// OpenKernel opens IPVS; default ipvsdp.Open in the current network
	// namespace. Tests substitute an in-memory table.
	OpenKernel func(ctx context.Context, log *slog.Logger) (Kernel, error)
	// ConnTable is the kernel's IPVS connection table; default
	// ipvsconn.DefaultPath (this network namespace's).
	ConnTable string
}

// Kernel is what lvsd needs of the kernel's IPVS: the director's dataplane
// plus the namespace's knobs, sync daemons and counters.
type Kernel interface {
	director.Dataplane
	SetKnobs(ctx context.Context, k ipvsdp.Knobs) error
	SetSync(ctx context.Context, want []ipvsdp.SyncDaemon) error
	SyncDaemons(ctx context.Context) ([]ipvsdp.SyncDaemon, error)
	Stats(ctx context.Context) ([]ipvsdp.ServiceStats, error)
	Close() error
}

func openKernel(ctx context.Context, log *slog.Logger) (Kernel, error) {
	return ipvsdp.Open(ctx, ipvsdp.WithLogger(log))
}

// engine is the running daemon. Fields below "loop-owned" are touched only
// on the loop goroutine.
type engine struct {
	opts    Options
	log     *slog.Logger
	started time.Time
	events  *eventLog
	metrics *metrics.Metrics
	store   *opstate.Store
	// overrides are this director's standing demote/promote per VIP group,
	// persisted (overrides.json) and restored into the election at start.
	overrides map[string]groupOverride
	reqs      chan func()
	loopCtx   context.Context
	// lastRefusedLog rate-limits the warning about refused peer records
	// (memberlist's goroutines merge them).
	lastRefusedLog atomic.Int64
	// repeated remembers the last error logged per subject, so a write the
	// kernel keeps refusing is logged once, not at every retry.
	repeated map[string]string

	// loop-owned
	loader   config.Loader
	cfg      *config.Config
	dp       Kernel // nil while the config needs no IPVS
	rec      *director.Reconciler
	marks    *fwmark.Manager
	mon      *healthcheck.Monitor
	node     *vrrp.Node // nil without VIP groups and cluster
	views    map[string][]backendView
	quorum   map[string]healthcheck.State
	inKernel map[string]director.DesiredService // last desired state synced, by service name
	resyncT  *ticker                            // the loop's resync timer; a reload re-arms it
	lastOps  director.OpCounts
	lastFail director.OpCounts
	// composeBuf is compose's scratch space.
	composeBuf []policy.Backend
	// restoreGC ends the start-up's relaxed garbage collection (see Run);
	// boundGC bounds it by memory from the first write on.
	restoreGC, boundGC func()
	// ownedSaved is the reconciler's OwnedVersion last persisted (valid
	// when ownedSavedOK): saveOwned skips an unchanged set.
	ownedSaved   uint64
	ownedSavedOK bool
}

// Run runs lvsd until ctx ends, then shuts down gracefully: the VIP is handed
// over at once, IPVS services are left in place (a restart adopts them), and
// lvsd's own nftables table is removed.
func Run(ctx context.Context, opts Options) (err error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	e := &engine{
		opts:     opts,
		log:      log,
		started:  time.Now(),
		events:   newEventLog(4096),
		reqs:     make(chan func()),
		views:    map[string][]backendView{},
		quorum:   map[string]healthcheck.State{},
		inKernel: map[string]director.DesiredService{},
	}
	// Until the table is composed, lvsd allocates little but what it keeps
	// (parse trees are recycled): collections would mostly re-mark that
	// growing heap, on the CPUs the parallel load and compose use. They are
	// rarer until lvsd runs, bounded by memory from the first write on.
	e.restoreGC, e.boundGC = relaxGC(startGCPercent)
	defer e.restoreGC()
	cfg, err := e.loader.Load(opts.ConfigPath)
	if err != nil {
		return err
	}
	if err := checkSpecs(cfg); err != nil {
		return err
	}
	if opts.Witness && len(cfg.VIPGroups)+len(cfg.Services) > 0 {
		log.Warn("witness mode: ignoring vip_group and service sections")
	}
	if opts.Witness && cfg.Cluster == nil {
		return errors.New("witness mode needs a [cluster] section")
	}
	e.cfg = cfg
	if err := os.MkdirAll(cfg.Node.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	if e.store, err = opstate.Open(cfg.Node.Name, filepath.Join(cfg.Node.StateDir, "runtime.json")); err != nil {
		return err
	}
	if e.overrides, err = loadOverrides(overridesPath(cfg.Node.StateDir)); err != nil {
		return err
	}
	// Read before anything touches the kernel or the network: a bad token
	// file must not stop lvsd halfway through its start.
	token, err := readToken(cfg.Control.TokenFile)
	if err != nil {
		return err
	}

	e.metrics = metrics.New(metricsSource{e}, log, metrics.PerBackend(cfg.Metrics.PerBackend))

	loopCtx, cancelLoop := context.WithCancel(context.Background())
	defer cancelLoop()
	e.loopCtx = loopCtx

	if !opts.Witness {
		if err := e.startDirector(ctx); err != nil {
			e.closeDataplane()
			return err
		}
	}
	e.restoreGC()
	defer e.stopDirector()

	// The VIP election runs in its own goroutine; it hands over on stop.
	var nodeDone chan error
	if opts.Witness || cfg.Cluster != nil || len(cfg.VIPGroups) > 0 {
		if err := e.startNode(); err != nil {
			return err
		}
		nodeDone = make(chan error, 1)
		nodeCtx, cancelNode := context.WithCancel(context.Background())
		defer cancelNode()
		go func() { nodeDone <- e.node.Run(nodeCtx) }()
	}

	apiErr := make(chan error, 2)
	apiCtx, cancelAPI := context.WithCancel(context.Background())
	defer cancelAPI()
	srv := api.NewServer(controller{e}, log, token)
	go func() { apiErr <- srv.ServeUnix(apiCtx, cfg.Control.Socket) }()
	if cfg.Control.Listen.IsValid() {
		go func() { apiErr <- srv.ServeTCP(apiCtx, cfg.Control.Listen.String()) }()
	}
	if cfg.Metrics.Listen.IsValid() {
		go func() {
			if err := e.metrics.Serve(apiCtx, cfg.Metrics.Listen.String()); err != nil {
				log.Error("metrics server stopped", "err", err)
			}
		}()
	}

	e.waitJoined(ctx)
	sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
	log.Info("lvsd running", "node", cfg.Node.Name, "mode", e.mode(), "config", cfg.File,
		"services", len(cfg.Services), "vip_groups", len(cfg.VIPGroups), "ipvs", e.dp != nil)

	runErr := e.loop(ctx, apiErr)
	// The loop is gone: callbacks posting to it must give up from now on.
	cancelLoop()

	sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	log.Info("lvsd stopping", "reason", stopReason(ctx, runErr))
	if e.node != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := e.node.Stop(sctx); err != nil {
			log.Warn("graceful VIP hand-over", "err", err)
		}
		cancel()
		select {
		case <-nodeDone:
		case <-time.After(5 * time.Second):
			log.Error("VIP election did not stop in time")
		}
	}
	cancelAPI()
	return runErr
}

// startGCPercent is the garbage collector's GOGC while lvsd starts: config
// load, compose, and (bounded by memory) adoption.
const startGCPercent = 400

// relaxGC sets GOGC to percent unless it is off or higher already. It
// returns what restores GOGC and the memory limit (once: later calls do
// nothing) and what bounds the heap, from the time of the call, by a soft
// memory limit of twice the memory in use (unless the operator's
// GOMEMLIMIT is lower): lvsd's first write starts then, and a collection
// deferred past it runs only if memory does grow (reading a full kernel on
// a restart), not while the kernel takes in the table.
func relaxGC(percent int) (restore, bound func()) {
	prev := debug.SetGCPercent(percent)
	if prev < 0 || prev >= percent {
		debug.SetGCPercent(prev)
		return func() {}, func() {}
	}
	prevLimit := debug.SetMemoryLimit(-1)
	var once sync.Once
	restore = func() {
		once.Do(func() {
			debug.SetGCPercent(prev)
			debug.SetMemoryLimit(prevLimit)
		})
	}
	bound = func() {
		sample := []rtmetrics.Sample{{Name: "/memory/classes/total:bytes"}}
		rtmetrics.Read(sample)
		if sample[0].Value.Kind() == rtmetrics.KindUint64 {
			if limit := 2 * int64(sample[0].Value.Uint64()); limit > 0 && limit < prevLimit {
				debug.SetMemoryLimit(limit)
			}
		}
	}
	return restore, bound
}

// waitJoined holds READY until the node has joined its cluster (memberlist
// sees another member), at most a few seconds: a director whose peers are all
// down must still come up.
func (e *engine) waitJoined(ctx context.Context) {
	if e.node == nil || e.cfg.Cluster == nil || len(e.cfg.Cluster.Peers) == 0 {
		return
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if len(e.node.Members()) >= 2 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.log.Warn("no cluster peer reachable yet; running alone until one joins", "peers", len(e.cfg.Cluster.Peers))
}

func stopReason(ctx context.Context, err error) string {
	if err != nil {
		return err.Error()
	}
	if ctx.Err() != nil {
		return "signal"
	}
	return "done"
}

func (e *engine) mode() string {
	switch {
	case e.opts.Witness:
		return "witness"
	case e.cfg.Cluster != nil:
		return "cluster"
	}
	return "standalone"
}

// loop runs closures, reloads, resyncs and the watchdog until ctx ends.
func (e *engine) loop(ctx context.Context, apiErr <-chan error) error {
	resync := newTicker(e.cfg.IPVS.ResyncInterval)
	defer resync.Stop()
	e.resyncT = resync
	var watchdog <-chan time.Time
	if d, err := sddaemon.SdWatchdogEnabled(false); err == nil && d > 0 {
		t := time.NewTicker(d / 3)
		defer t.Stop()
		watchdog = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-apiErr:
			if err != nil {
				return err
			}
		case f := <-e.reqs:
			f()
		case <-e.opts.Reload:
			res := e.reload()
			if !res.OK {
				e.log.Error("reload rejected; running config unchanged", "config", res.Config, "errors", strings.Join(res.Errors, "; "))
			}
		case <-resync.C:
			e.resync()
			resync.Reset(e.cfg.IPVS.ResyncInterval)
		case <-watchdog:
			// Pinged from the loop itself, so a wedged loop stops the pings.
			sddaemon.SdNotify(false, sddaemon.SdNotifyWatchdog)
		}
	}
}

// do runs f on the loop and waits for it (or ctx).
func (e *engine) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case e.reqs <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-e.loopCtx.Done():
		return errors.New("lvsd is shutting down")
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// post queues f on the loop without waiting; callbacks from other packages
// use it. It gives up when lvsd is shutting down.
func (e *engine) post(f func()) {
	select {
	case e.reqs <- f:
	case <-e.loopCtx.Done():
	}
}

type ticker struct {
	t *time.Timer
	C <-chan time.Time
}

// newTicker is a timer that never fires when d is 0 (resync disabled).
func newTicker(d time.Duration) *ticker {
	t := time.NewTimer(time.Hour)
	t.Stop()
	tk := &ticker{t: t, C: t.C}
	tk.Reset(d)
	return tk
}

// Reset (re)arms the timer for d from now; d = 0 disarms it.
func (t *ticker) Reset(d time.Duration) {
	t.t.Stop()
	if d > 0 {
		t.t.Reset(d)
	}
}

func (t *ticker) Stop() { t.t.Stop() }

// startDirector opens IPVS (when the config has services), adopts what the
// kernel already holds, installs marks and starts the health checks.
func (e *engine) startDirector(ctx context.Context) error {
	e.marks = fwmark.New(e.log)
	if err := e.ensureDataplane(ctx); err != nil {
		return err
	}
	if len(e.views) == 0 && len(e.quorum) == 0 {
		e.views = make(map[string][]backendView, len(e.cfg.Services))
		e.quorum = make(map[string]healthcheck.State, len(e.cfg.Services))
	}
	recs := recordsByService(e.store.Records()) // not ForService 10,000 times
	svcs := e.cfg.Services
	views := make([][]backendView, len(svcs))
	parallel(len(svcs), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			views[i] = effectiveBackends(svcs[i], recs[svcs[i].Name])
		}
	})
	for i, s := range svcs {
		e.views[s.Name] = views[i]
	}
	e.mon = healthcheck.NewMonitor(healthcheck.Options{
		Logger:       e.log,
		OnTransition: func(ev healthcheck.Event) { e.post(func() { e.onHealth(ev) }) },
	})
	if e.dp != nil {
		desired := e.composeAll()
		if e.boundGC != nil {
			e.boundGC()
		}
		prev, err := e.loadOwned()
		if err != nil {
			e.log.Warn("ignoring unreadable record of previously owned services", "err", err)
		}
		res, err := e.rec.Adopt(ctx, desired, prev)
		e.countOps()
		var werr *director.WriteError
		switch {
		case errors.As(err, &werr):
			// One service the kernel refuses (a scheduler module missing, a
			// bad destination) must not keep every other one, and the VIPs,
			// down: run, and retry it at the next resync or change.
			e.log.Error("adopt kernel IPVS state: some writes failed; those services are retried at the next resync or change",
				"failed", res.Failed.Total(), "pending", res.Pending, "err", err)
			e.events.add(api.Event{Kind: "ipvs", Subject: "start", To: "partial",
				Reason: fmt.Sprintf("%d write(s) failed, %d service(s) pending: %v", res.Failed.Total(), res.Pending, err)})
		case err != nil:
			return fmt.Errorf("adopt kernel IPVS state: %w", err)
		}
		e.log.Info("adopted kernel IPVS state", "services", len(desired), "writes", res.Ops.Total(), "failed", res.Failed.Total(), "pending", res.Pending)
		e.saveOwned()
	}
	if err := e.applyMarks(ctx); err != nil {
		return err
	}
	if err := e.mon.Update(e.checks()); err != nil {
		return fmt.Errorf("start health checks: %w", err)
	}
	return nil
}

// ensureDataplane opens IPVS the first time the config needs it.
func (e *engine) ensureDataplane(ctx context.Context) error {
	if e.cfg.NeedsIPVS() && e.dp == nil {
		open := e.opts.OpenKernel
		if open == nil {
			open = openKernel
		}
		dp, err := open(ctx, e.log)
		if err != nil {
			return fmt.Errorf("open IPVS: %w", err)
		}
		e.dp = dp
		e.rec = director.New(dp, e.log)
	}
	if e.dp == nil {
		return nil
	}
	if err := e.dp.SetKnobs(ctx, ipvsdp.Knobs{
		ExpireNodestConn:        e.cfg.IPVS.ExpireNodestConn,
		ExpireQuiescentTemplate: e.cfg.IPVS.ExpireQuiescentTemplate,
	}); err != nil {
		return fmt.Errorf("set IPVS sysctls: %w", err)
	}
	return e.applySync(ctx)
}

// applySync runs the kernel's connection sync daemons. Both roles run on every
// director: the owner's master sends its connections and persistence
// templates, every backup receives them, so nothing switches at failover.
func (e *engine) applySync(ctx context.Context) error {
	s := e.cfg.IPVS.Sync
	var want []ipvsdp.SyncDaemon
	if s.Enabled {
		for _, role := range []ipvsdp.SyncDaemon{{State: ipvsdp.SyncMaster}, {State: ipvsdp.SyncBackup}} {
			role.Interface = s.Interface
			role.SyncID = uint32(s.SyncID)
			want = append(want, role)
		}
	}
	if !s.Enabled {
		running, err := e.dp.SyncDaemons(ctx)
		if err != nil || len(running) == 0 {
			return nil // nothing to stop; lvsd never started one here
		}
	}
	if err := e.dp.SetSync(ctx, want); err != nil {
		return fmt.Errorf("connection sync daemons: %w", err)
	}
	return nil
}

func (e *engine) applyMarks(ctx context.Context) error {
	var marks []fwmark.Mark
	for _, s := range e.cfg.Services {
		if m, ok := markOf(s); ok {
			marks = append(marks, m)
		}
	}
	if len(marks) == 0 {
		// Nothing to mark: remove a table a crashed run may have left, but a
		// host without nftables is fine when nothing needs it.
		if err := e.marks.Remove(ctx); err != nil {
			e.log.Debug("no firewall marks configured; removing lvsd's nftables table", "err", err)
		}
		return nil
	}
	if err := e.marks.Apply(ctx, marks); err != nil {
		return fmt.Errorf("install firewall marks: %w", err)
	}
	return nil
}

// stopDirector stops health checks, removes omega services and lvsd's
// nftables table, and closes IPVS. Other IPVS services stay.
func (e *engine) stopDirector() {
	if e.mon != nil {
		e.mon.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if e.rec != nil {
		for _, s := range e.cfg.Services {
			if s.Omega {
				if _, err := e.rec.RemoveService(ctx, serviceKeyOf(s)); err != nil {
					e.log.Warn("omega: remove service", "service", s.Name, "err", err)
				}
			}
		}
		e.saveOwned()
	}
	if e.marks != nil {
		if err := e.marks.Remove(ctx); err != nil {
			e.log.Warn("remove lvsd's nftables table", "err", err)
		}
	}
	e.closeDataplane()
}

func (e *engine) closeDataplane() {
	if e.dp != nil {
		e.dp.Close()
		e.dp = nil
	}
}

// composeAll computes every service's desired state: the services on every
// CPU (10,000 of them at start), then their quorum, logs and events in
// config order.
func (e *engine) composeAll() []director.DesiredService {
	svcs := e.cfg.Services
	type composed struct {
		d   director.DesiredService
		out policy.Outcome
		err error
	}
	res := make([]composed, len(svcs))
	parallel(len(svcs), func(lo, hi int) {
		var buf []policy.Backend
		for i := lo; i < hi; i++ {
			s, r := svcs[i], &res[i]
			r.d, r.out, r.err = composeWith(&buf, s, e.views[s.Name], e.health, e.quorum[s.Name])
		}
	})
	out := make([]director.DesiredService, 0, len(svcs))
	for i, s := range svcs {
		if d, ok := e.composed(s, res[i].d, res[i].out, res[i].err); ok {
			out = append(out, d)
		}
	}
	return out
}

// parallelMin is the fewest items parallel spreads over CPUs.
const parallelMin = 1024

// parallel calls fn on consecutive ranges of [0, n), one per CPU when n is
// large, and returns when all are done. fn must be safe to run
// concurrently on distinct ranges.
func parallel(n int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), n/(parallelMin/2))
	if workers < 2 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { fn(w*n/workers, (w+1)*n/workers) })
	}
	wg.Wait()
}

// compose computes one service's desired state and tracks its quorum.
func (e *engine) compose(s *config.Service) (director.DesiredService, bool) {
	d, out, err := composeWith(&e.composeBuf, s, e.views[s.Name], e.health, e.quorum[s.Name])
	return e.composed(s, d, out, err)
}

// composed tracks the quorum of a composed service and reports a failure.
func (e *engine) composed(s *config.Service, d director.DesiredService, out policy.Outcome, err error) (director.DesiredService, bool) {
	if err != nil {
		e.log.Error("compose desired state", "service", s.Name, "err", err)
		return director.DesiredService{}, false
	}
	if out.Change != nil {
		// With quorum off a service is always up: its first evaluation is
		// no news, and a line and an event for each of 10,000 services cost
		// seconds at start-up and flushed the event history.
		if out.Change.Quorum != 0 {
			ev := out.Change.Event(s.Name)
			e.log.Info("service quorum", "service", s.Name, "from", out.Change.From, "to", out.Change.To, "reason", out.Change.Reason())
			e.events.add(api.Event{Time: time.Now(), Kind: "quorum", Subject: s.Name, From: out.Change.From.String(), To: out.Change.To.String(), Reason: ev.Reason})
		}
		if e.node != nil {
			e.node.SetServiceQuorum(s.Name, out.Quorum == healthcheck.StateUp)
		}
	}
	e.quorum[s.Name] = out.Quorum
	return d, true
}

// health answers a checked backend's state; before its first result, the
// tracker's initial state (down with alpha, up otherwise).
func (e *engine) health(k healthcheck.Key) (healthcheck.State, int) {
	if e.mon != nil {
		if st, ok := e.mon.Status(k); ok && st.State != healthcheck.StateUnknown {
			return st.State, st.Weight
		}
	}
	if s := e.cfg.Service(k.Service); s != nil && s.Alpha {
		return healthcheck.StateDown, healthcheck.NoWeight
	}
	return healthcheck.StateUp, healthcheck.NoWeight
}

// checks lists every health check the current config and overrides need.
func (e *engine) checks() []healthcheck.Check {
	var out []healthcheck.Check
	for _, s := range e.cfg.Services {
		for _, v := range e.views[s.Name] {
			if v.Removed || !checked(v.Check) {
				continue
			}
			spec := checkSpec(s, v.Check)
			if noCheckPort(spec, v.Key) {
				// Only a backend added at run time by an older lvsd (or a
				// peer's) can get here: config and lvsctl refuse it. One bad
				// check must not stop every other (Update is all or nothing)
				// nor lvsd's start.
				e.log.Error("backend left unchecked: its check needs a port and it has none; remove it and add it with ADDRESS:PORT",
					"service", s.Name, "backend", v.Key)
				continue
			}
			out = append(out, healthcheck.Check{Key: healthcheck.Key{Service: s.Name, Backend: v.Key}, Spec: spec})
		}
	}
	return out
}

// noCheckPort reports whether spec needs a port that neither it nor the
// backend gives.
func noCheckPort(spec healthcheck.Spec, b netip.AddrPort) bool {
	return spec.NeedsPort() && spec.Port == 0 && b.Port() == 0
}

// syncService pushes one service's desired state to the kernel.
func (e *engine) syncService(ctx context.Context, s *config.Service) {
	if e.rec == nil {
		return
	}
	d, ok := e.compose(s)
	if !ok {
		return
	}
	if prev, ok := e.inKernel[s.Name]; ok && director.SameService(prev.Service, d.Service) && sameDests(prev.Destinations, d.Destinations) {
		return
	}
	res, err := e.rec.SyncService(ctx, d)
	e.countOps()
	e.logOnce(slog.LevelError, "sync service "+s.Name, "sync service", err, "service", s.Name)
	if res.Pending == 0 {
		e.inKernel[s.Name] = d
	} else {
		delete(e.inKernel, s.Name)
	}
}

func sameDests(a, b []director.Destination) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// countOps forwards the reconciler's new writes to metrics.
func (e *engine) countOps() {
	if e.rec == nil {
		return
	}
	ops, failed := e.rec.Writes()
	for k := director.OpAddService; k <= director.OpDelDest; k++ {
		e.metrics.AddReconcile(k.String(), int(ops[k]-e.lastOps[k]), int(failed[k]-e.lastFail[k]))
	}
	e.lastOps, e.lastFail = ops, failed
}

func (e *engine) onHealth(ev healthcheck.Event) {
	e.log.LogAttrs(context.Background(), slog.LevelInfo, "backend health", ev.LogAttrs()...)
	subject := ev.Service
	if ev.Backend.IsValid() {
		subject += "/" + ev.Backend.String()
	}
	e.events.add(api.Event{Time: ev.Time, Kind: string(ev.Kind), Subject: subject, From: ev.From.String(), To: ev.To.String(), Reason: ev.Reason})
	if s := e.cfg.Service(ev.Service); s != nil {
		e.syncService(e.loopCtx, s)
	}
}

// resync repairs drift between lvsd's record and the kernel.
func (e *engine) resync() {
	if e.rec == nil {
		return
	}
	res, err := e.rec.Resync(e.loopCtx)
	e.countOps()
	e.logOnce(slog.LevelWarn, "resync", "IPVS resync", err)
	if res.Drift > 0 {
		e.log.Warn("IPVS drift repaired", "drifted", res.Drift, "writes", res.Ops.Total(), "failed", res.Failed.Total())
		e.events.add(api.Event{Kind: "reconcile", Subject: "ipvs", To: "repaired", Reason: fmt.Sprintf("%d drifted objects repaired", res.Drift)})
		clear(e.inKernel)
	}
	e.saveOwned()
}

// logOnce logs err at level the first time subject fails with it, at debug
// while it fails the same way (every resync retries a refused write), and
// at info once subject succeeds again (err nil). Runs on the loop.
func (e *engine) logOnce(level slog.Level, subject, msg string, err error, args ...any) {
	prev, failing := e.repeated[subject]
	switch {
	case err == nil && failing:
		delete(e.repeated, subject)
		e.log.Info(msg+": succeeded again", append(args, "after", prev)...)
	case err == nil:
	case failing && prev == err.Error():
		e.log.Debug(msg+": still failing", append(args, "err", err)...)
	default:
		if e.repeated == nil {
			e.repeated = map[string]string{}
		}
		e.repeated[subject] = err.Error()
		e.log.Log(context.Background(), level, msg, append(args, "err", err)...)
	}
}

// Owned services are persisted so that a service deleted from the config
// while lvsd was down is removed at the next start, and nothing else.
func (e *engine) ownedPath() string { return filepath.Join(e.cfg.Node.StateDir, "owned.json") }

type ownedKey struct {
	Family   uint16 `json:"family"`
	Protocol uint16 `json:"protocol,omitempty"`
	Address  string `json:"address,omitempty"`
	Port     uint16 `json:"port,omitempty"`
	FWMark   uint32 `json:"fwmark,omitempty"`
}

func (e *engine) loadOwned() ([]director.ServiceKey, error) {
	data, err := os.ReadFile(e.ownedPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []ownedKey
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, fmt.Errorf("%s: %w", e.ownedPath(), err)
	}
	out := make([]director.ServiceKey, 0, len(keys))
	for _, k := range keys {
		sk := director.ServiceKey{Family: director.Family(k.Family), Protocol: director.Protocol(k.Protocol), Port: k.Port, FWMark: k.FWMark}
		if k.Address != "" {
			if err := sk.Address.UnmarshalText([]byte(k.Address)); err != nil {
				return nil, fmt.Errorf("%s: %w", e.ownedPath(), err)
			}
		}
		out = append(out, sk)
	}
	return out, nil
}

func (e *engine) saveOwned() {
	if e.rec == nil {
		return
	}
	version := e.rec.OwnedVersion()
	if e.ownedSavedOK && version == e.ownedSaved {
		return // a reload or resync that added and removed nothing
	}
	owned := e.rec.Owned() // sorted, so the file is stable
	keys := make([]ownedKey, 0, len(owned))
	for _, k := range owned {
		ok := ownedKey{Family: uint16(k.Family), Protocol: uint16(k.Protocol), Port: k.Port, FWMark: k.FWMark}
		if k.Address.IsValid() {
			ok.Address = k.Address.String()
		}
		keys = append(keys, ok)
	}
	data, _ := json.Marshal(keys)
	if old, err := os.ReadFile(e.ownedPath()); err == nil && string(old) == string(data) {
		e.ownedSaved, e.ownedSavedOK = version, true
		return
	}
	if err := atomicfile.Write(e.ownedPath(), data, 0o600); err != nil {
		e.log.Warn("persist owned IPVS services", "err", err)
		return
	}
	e.ownedSaved, e.ownedSavedOK = version, true
}

func readToken(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read control token: %w", err)
	}
	tok := []byte(strings.TrimSpace(string(b)))
	if len(tok) < 16 {
		return nil, fmt.Errorf("control token in %s is shorter than 16 characters", path)
	}
	return tok, nil
}
