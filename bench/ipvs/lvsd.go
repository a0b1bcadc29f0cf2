package main

// The lvsd figures of issue 3: lvsd itself, started from its binary in a
// fresh namespace, programs the table from a config split over include
// files, reloads one changed weight, makes no write when in sync, and keeps
// its peak RSS. Write counts come from lvsd's JSON log: the reconciler logs
// one "ipvs writes" line (done=..., failed=...) for every batch that wrote
// anything, and every IPVS write goes through it. (lvsd's Prometheus
// metrics count the same writes, but a scrape also dumps the kernel's
// counters of all 110,000 objects, which would cost seconds and dominate
// the peak RSS being measured.)

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/ipvsdp"
)

// lvsdFigures runs the lvsd figures in order on one lvsd and one table, and
// returns the time to program the table from empty (for the ratio to
// ipvsadm -R).
func (b *bench) lvsdFigures(ctx context.Context) (time.Duration, error) {
	if err := b.discardProgrammed(ctx); err != nil {
		return 0, err
	}
	path, err := b.freshNS("lvsd")
	if err != nil {
		return 0, err
	}
	r, err := b.newLvsdRun(ctx, path, b.cfg.services, b.cfg.dests)
	if err != nil {
		return 0, err
	}
	defer r.close()
	prog, err := b.figureLvsdProgram(ctx, r)
	if err != nil {
		return 0, err
	}
	if err := b.figureLvsdReloadWeight(ctx, r); err != nil {
		return 0, err
	}
	if err := b.figureLvsdReloadInSync(ctx, r); err != nil {
		return 0, err
	}
	if err := b.figureLvsdPeakRSS(r, "after start and reloads"); err != nil {
		return 0, err
	}
	if err := b.figureLvsdRestartResync(ctx, r); err != nil {
		return 0, err
	}
	if err := b.figureLvsdPeakRSS(r, "restarted, after adopt and resyncs"); err != nil {
		return 0, err
	}
	if err := r.stop(ctx); err != nil {
		return 0, err
	}
	return prog, b.discard(ctx, path)
}

// figureLvsdProgram starts lvsd on the empty namespace and times it from
// process start until the kernel holds the whole table.
func (b *bench) figureLvsdProgram(ctx context.Context, r *lvsdRun) (time.Duration, error) {
	elapsed, err := r.startAndWaitTable(ctx)
	if err != nil {
		return 0, err
	}
	ad, ok := r.log.first(0, "ipvs adopted kernel state")
	detail := ""
	if ok {
		adopt := ad.dur("took")
		before := ad.at.Sub(r.started) - adopt
		detail = fmt.Sprintf("from lvsd's log: %s to adopt (exec, config load, compose), adopt %s (%s)", secs(before), secs(adopt), ad.str("writes"))
	}
	b.line("lvsd program from empty", secs(elapsed), fmt.Sprintf("process start → table complete, %d include files; %s", r.files, detail))
	return elapsed, nil
}

// figureLvsdReloadWeight changes one backend's weight in its include file,
// sends SIGHUP and times until the kernel shows the new weight, polling
// that service's destinations every millisecond. Several trials, each on a
// different file.
func (b *bench) figureLvsdReloadWeight(ctx context.Context, r *lvsdRun) error {
	n := b.cfg.reloadTrials
	var visible, took []time.Duration
	maxWrites, failed := 0, 0
	for t := range n {
		svc := (t*r.services/n + r.services/(2*n)) % r.services
		dest := t % r.dests
		weight := 2 + t
		r.weights[[2]int{svc, dest}] = weight
		if err := r.writeServiceFile(r.fileOf(svc)); err != nil {
			return err
		}
		key, addr := serviceKey(svc), destAddr(dest)
		mark := r.log.mark()
		start := time.Now()
		if err := r.signal(syscall.SIGHUP); err != nil {
			return err
		}
		for {
			ds, err := r.dp.Destinations(ctx, key)
			if err != nil {
				return fmt.Errorf("polling %s: %w", key, err)
			}
			if i := slices.IndexFunc(ds, func(d director.Destination) bool { return d.Key.Address == addr }); i >= 0 && ds[i].Weight == weight {
				break
			}
			if time.Since(start) > time.Minute {
				return fmt.Errorf("weight %d of %s in %s not in the kernel after 1 minute of SIGHUP\n%s", weight, addr, key, r.log.tail(20))
			}
			if err := r.alive(); err != nil {
				return err
			}
			time.Sleep(time.Millisecond)
		}
		visible = append(visible, time.Since(start))
		rl, idx, err := r.log.wait(ctx, mark, time.Minute, "config reloaded", r.exited)
		if err != nil {
			return err
		}
		w, f := r.log.writes(mark, idx)
		maxWrites, failed = max(maxWrites, w+f), failed+f
		took = append(took, rl.dur("took"))
	}
	b.line("lvsd reload one weight", msMedian(visible), fmt.Sprintf("SIGHUP → new weight in kernel, median of %d (%s–%s); target ≤ 100 ms; keepalived 16-20 s at 10k (lab notes)",
		n, ms(slices.Min(visible)), ms(slices.Max(visible))))
	b.line("  lvsd's own reload time", msMedian(took), "lvsd log \"config reloaded took=\" (load changed file, diff, write, persist), median")
	b.line("  netlink writes per reload", strconv.Itoa(maxWrites), fmt.Sprintf("most in one trial, from lvsd's \"ipvs writes\" log; target ≤ 2; %d failed", failed))
	return nil
}

// figureLvsdReloadInSync sends SIGHUP with nothing changed.
func (b *bench) figureLvsdReloadInSync(ctx context.Context, r *lvsdRun) error {
	mark := r.log.mark()
	start := time.Now()
	if err := r.signal(syscall.SIGHUP); err != nil {
		return err
	}
	rl, idx, err := r.log.wait(ctx, mark, time.Minute, "config reloaded", r.exited)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	w, f := r.log.writes(mark, idx)
	b.line("lvsd writes, reload in sync", strconv.Itoa(w+f), fmt.Sprintf("SIGHUP with no change; target 0; %d change(s) reported, lvsd took %s, log seen after %s",
		int(rl.num("changes")), ms(rl.dur("took")), ms(elapsed)))
	return nil
}

// figureLvsdPeakRSS reads lvsd's VmHWM and VmRSS.
func (b *bench) figureLvsdPeakRSS(r *lvsdRun, when string) error {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return fmt.Errorf("lvsd's status: %w", err)
	}
	field := func(name string) string {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, name+":"); ok {
				if kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB")); err == nil {
					return fmt.Sprintf("%.1f MiB", float64(kb)/1024)
				}
			}
		}
		return "?"
	}
	b.line("lvsd peak RSS", field("VmHWM"), fmt.Sprintf("VmHWM %s (VmRSS now %s), %d × %d table", when, field("VmRSS"), r.services, r.dests))
	return nil
}

// figureLvsdRestartResync restarts lvsd on the loaded table with a short
// resync_interval: adoption must write nothing, and so must the resyncs
// that follow. A scheduler then changed behind lvsd's back must be
// repaired, which shows the resyncs ran.
func (b *bench) figureLvsdRestartResync(ctx context.Context, r *lvsdRun) error {
	if err := r.stop(ctx); err != nil {
		return err
	}
	r.resync = b.cfg.resync
	if err := r.writeMain(); err != nil {
		return err
	}
	mark := r.log.mark()
	if err := r.start(); err != nil {
		return err
	}
	run, idx, err := r.log.wait(ctx, mark, 30*time.Minute, "lvsd running", r.exited)
	if err != nil {
		return err
	}
	w, f := r.log.writes(mark, idx)
	detail := ""
	if ad, ok := r.log.first(mark, "ipvs adopted kernel state"); ok {
		detail = fmt.Sprintf("adopted %d, adopt took %s", int(ad.num("adopted")), secs(ad.dur("took")))
	}
	b.line("lvsd writes, restart", strconv.Itoa(w+f), fmt.Sprintf("restart on the full table, ready after %s; target 0; %s", secs(run.at.Sub(r.started)), detail))

	// Resyncs: 3 intervals plus a second after the loop started.
	window := 3*r.resync + time.Second
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return ctx.Err()
	}
	end := r.log.mark()
	w, f = r.log.writes(idx, end)
	drift := r.log.count(idx, end, "IPVS drift repaired")
	if err := r.alive(); err != nil {
		return err
	}

	// Drift: another tool changes a service's scheduler.
	svcs, err := r.dp.Services(ctx)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(svcs, func(s director.Service) bool { return s.Key == serviceKey(r.services/3) })
	if i < 0 {
		return fmt.Errorf("service %s missing from the kernel", serviceKey(r.services/3))
	}
	svc := svcs[i]
	svc.Flags &^= director.FlagHashed
	svc.Scheduler = "wrr"
	start := time.Now()
	if errs := r.dp.Apply(ctx, []director.Op{{Kind: director.OpUpdateService, Service: svc}}); errs != nil {
		return fmt.Errorf("injecting drift: %w", firstErrors(errs, 1))
	}
	rep, _, err := r.log.wait(ctx, end, 3*r.resync+time.Minute, "IPVS drift repaired", r.exited)
	if err != nil {
		return err
	}
	repaired := time.Since(start)
	b.line("lvsd writes, resync in sync", strconv.Itoa(w+f), fmt.Sprintf("%s window with resync_interval %s (≥ 2 resyncs expected); target 0; %d drift repairs", secs(window), r.resync, drift))
	b.line("  resync repairs drift", secs(repaired), fmt.Sprintf("scheduler changed behind lvsd's back → \"IPVS drift repaired\" (drifted %d, writes %d); bound: interval + one resync",
		int(rep.num("drifted")), int(rep.num("writes"))))
	return nil
}

// lvsdRun is one lvsd process (restartable) on one namespace and config.
type lvsdRun struct {
	b               *bench
	bin, dir, ns    string
	services, dests int
	files, perFile  int
	resync          time.Duration
	weights         map[[2]int]int // (service, destination) → weight, when not 1
	dp              *ipvsdp.Dataplane
	log             *lvsdLog
	cmd             *exec.Cmd
	started         time.Time
	exited          chan struct{} // closed when cmd has exited
	waitErr         error
	stopped         bool
}

func (b *bench) newLvsdRun(ctx context.Context, ns string, services, dests int) (*lvsdRun, error) {
	dir, err := os.MkdirTemp("", "bench-ipvs-lvsd-*")
	if err != nil {
		return nil, err
	}
	files := min(100, services)
	per := (services + files - 1) / files
	r := &lvsdRun{b: b, bin: b.cfg.lvsd, dir: dir, ns: ns, services: services, dests: dests,
		files: (services + per - 1) / per, perFile: per, weights: map[[2]int]int{}}
	if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		r.close()
		return nil, err
	}
	if err := r.writeMain(); err != nil {
		r.close()
		return nil, err
	}
	for f := range r.files {
		if err := r.writeServiceFile(f); err != nil {
			r.close()
			return nil, err
		}
	}
	if r.dp, err = ipvsdp.Open(ctx, ipvsdp.WithNetNS(ns), ipvsdp.WithLogger(b.log)); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *lvsdRun) configPath() string { return filepath.Join(r.dir, "lvsd.toml") }

// writeMain writes the main config: no cluster, no VIP group, resync as set
// (0: off), control socket and state in the run's directory.
func (r *lvsdRun) writeMain() error {
	s := fmt.Sprintf("include = [\"conf.d/*.toml\"]\n\n[node]\nname = \"bench\"\nstate_dir = %q\n\n[ipvs]\nresync_interval = %q\n\n[control]\nsocket = %q\n",
		filepath.Join(r.dir, "state"), r.resync.String(), filepath.Join(r.dir, "lvsd.sock"))
	return writeAtomic(r.configPath(), []byte(s))
}

func (r *lvsdRun) fileOf(svc int) int { return svc / r.perFile }

// writeServiceFile writes include file f: the services of the table (as
// tableOps and writeRestore build it) that belong to it.
func (r *lvsdRun) writeServiceFile(f int) error {
	var sb strings.Builder
	for i := f * r.perFile; i < min((f+1)*r.perFile, r.services); i++ {
		fmt.Fprintf(&sb, "[[service]]\nname = \"svc-%d\"\naddress = \"%s\"\nprotocol = \"tcp\"\nport = 80\nscheduler = \"rr\"\nforward = \"dr\"\n", i, serviceKey(i).Address)
		for j := range r.dests {
			w, ok := r.weights[[2]int{i, j}]
			if !ok {
				w = 1
			}
			fmt.Fprintf(&sb, "  [[service.backend]]\n  address = \"%s\"\n  weight = %d\n", destAddr(j), w)
		}
	}
	return writeAtomic(filepath.Join(r.dir, "conf.d", fmt.Sprintf("%03d.toml", f)), []byte(sb.String()))
}

// writeAtomic replaces a file the way config management does: a new file
// renamed over the old one, so lvsd never reads half of it.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// start starts lvsd in the namespace with a JSON log.
func (r *lvsdRun) start() error {
	cmd := exec.Command(r.bin, "--config", r.configPath(), "--log-format", "json")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if r.log == nil {
		r.log = newLvsdLog(r.b.cfg.lvsdVerbose)
	}
	r.started = time.Now()
	if err := startInNS(r.ns, cmd); err != nil {
		return fmt.Errorf("starting %s: %w", r.bin, err)
	}
	r.cmd, r.exited, r.waitErr, r.stopped = cmd, make(chan struct{}), nil, false
	exited := r.exited
	go func() {
		r.log.read(stderr)
		r.waitErr = cmd.Wait()
		close(exited)
	}()
	return nil
}

// startAndWaitTable starts lvsd and returns the time from process start
// until the kernel holds the whole table. It polls the last service's
// destinations (one cheap netlink request each 10 ms: each takes the
// kernel's IPVS mutex, which lvsd's writes need too); lvsd writes services
// in key order, so the last one complete means the table is, which one dump
// of every service and the first service's destinations then confirm.
func (r *lvsdRun) startAndWaitTable(ctx context.Context) (time.Duration, error) {
	if err := r.start(); err != nil {
		return 0, err
	}
	last := serviceKey(r.services - 1)
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if ds, err := r.dp.Destinations(ctx, last); err == nil && len(ds) == r.dests {
			elapsed := time.Since(r.started)
			if err := verify(ctx, r.dp, r.services, r.dests); err != nil {
				return 0, fmt.Errorf("the last service is complete but: %w", err)
			}
			return elapsed, nil
		} else if err != nil && !errors.Is(err, syscall.ESRCH) {
			return 0, fmt.Errorf("polling %s: %w", last, err)
		}
		if err := r.alive(); err != nil {
			return 0, err
		}
		if time.Since(r.started) > 30*time.Minute {
			return 0, fmt.Errorf("lvsd has not programmed the table after 30 minutes\n%s", r.log.tail(20))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *lvsdRun) signal(sig os.Signal) error {
	if err := r.alive(); err != nil {
		return err
	}
	return r.cmd.Process.Signal(sig)
}

// alive fails once lvsd has exited unasked, with the end of its log.
func (r *lvsdRun) alive() error {
	select {
	case <-r.exited:
		return fmt.Errorf("lvsd exited (%v); its last log lines:\n%s", r.waitErr, r.log.tail(20))
	default:
		return nil
	}
}

// stop sends SIGTERM and waits for lvsd to exit cleanly.
func (r *lvsdRun) stop(ctx context.Context) error {
	if r.cmd == nil || r.stopped {
		return nil
	}
	if err := r.signal(syscall.SIGTERM); err != nil {
		return err
	}
	r.stopped = true
	select {
	case <-r.exited:
	case <-time.After(2 * time.Minute):
		_ = r.cmd.Process.Kill()
		<-r.exited
		return fmt.Errorf("lvsd did not stop within 2 minutes of SIGTERM\n%s", r.log.tail(20))
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.waitErr != nil {
		return fmt.Errorf("lvsd stopped with %v\n%s", r.waitErr, r.log.tail(20))
	}
	return nil
}

// close kills lvsd if it still runs and removes the run's files.
func (r *lvsdRun) close() {
	if r.cmd != nil && !r.stopped {
		_ = r.cmd.Process.Kill()
		<-r.exited
		r.stopped = true
	}
	if r.dp != nil {
		r.dp.Close()
	}
	os.RemoveAll(r.dir)
}

// lvsdLog collects lvsd's JSON log lines as they arrive.
type lvsdLog struct {
	verbose bool // echo every line, not only warnings and errors
	mu      sync.Mutex
	entries []logEntry
	more    chan struct{} // closed and replaced when entries grow
}

type logEntry struct {
	at    time.Time // when the bench read it
	msg   string
	attrs map[string]any
	raw   string
}

func newLvsdLog(verbose bool) *lvsdLog { return &lvsdLog{verbose: verbose, more: make(chan struct{})} }

// read appends every line of r until EOF; warnings and errors are echoed.
func (l *lvsdLog) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		e := logEntry{at: time.Now(), raw: sc.Text()}
		if json.Unmarshal(sc.Bytes(), &e.attrs) == nil {
			e.msg, _ = e.attrs["msg"].(string)
		}
		if lvl, _ := e.attrs["level"].(string); l.verbose || lvl == "WARN" || lvl == "ERROR" || e.attrs == nil {
			fmt.Fprintln(os.Stderr, "lvsd:", e.raw)
		}
		l.mu.Lock()
		l.entries = append(l.entries, e)
		close(l.more)
		l.more = make(chan struct{})
		l.mu.Unlock()
	}
}

// mark is the index of the next entry.
func (l *lvsdLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}

// wait returns the first entry from index from on with message msg, and its
// index.
func (l *lvsdLog) wait(ctx context.Context, from int, limit time.Duration, msg string, exited <-chan struct{}) (logEntry, int, error) {
	deadline := time.After(limit)
	gone := false
	for {
		l.mu.Lock()
		for i := from; i < len(l.entries); i++ {
			if l.entries[i].msg == msg {
				e := l.entries[i]
				l.mu.Unlock()
				return e, i, nil
			}
		}
		from = len(l.entries)
		more := l.more
		l.mu.Unlock()
		if gone {
			return logEntry{}, 0, fmt.Errorf("lvsd exited before logging %q; its last log lines:\n%s", msg, l.tail(20))
		}
		select {
		case <-more:
		case <-exited:
			gone = true // every line is in: look once more, then give up
		case <-deadline:
			return logEntry{}, 0, fmt.Errorf("no %q from lvsd within %s; its last log lines:\n%s", msg, limit, l.tail(20))
		case <-ctx.Done():
			return logEntry{}, 0, ctx.Err()
		}
	}
}

func (l *lvsdLog) first(from int, msg string) (logEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries[from:] {
		if e.msg == msg {
			return e, true
		}
	}
	return logEntry{}, false
}

func (l *lvsdLog) count(from, to int, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.entries[from:to] {
		if e.msg == msg {
			n++
		}
	}
	return n
}

// writes sums the IPVS writes lvsd logged in entries [from, to): done and
// failed.
func (l *lvsdLog) writes(from, to int) (done, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries[from:to] {
		switch e.msg {
		case "ipvs writes":
			done += opsTotal(e.attrs["done"])
			failed += opsTotal(e.attrs["failed"])
		case "ipvs adopted kernel state":
			done += opsTotal(e.attrs["writes"])
			failed += opsTotal(e.attrs["failed"])
		}
	}
	return done, failed
}

func (l *lvsdLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sb strings.Builder
	for _, e := range l.entries[max(0, len(l.entries)-n):] {
		sb.WriteString("  " + e.raw + "\n")
	}
	return sb.String()
}

// opsTotal reads an op count as lvsd logs it: "add-service=1 add-dest=10",
// "none", or a number.
func opsTotal(v any) int {
	switch x := v.(type) {
	case float64:
		return int(x)
	case string:
		n := 0
		for _, f := range strings.Fields(x) {
			if _, c, ok := strings.Cut(f, "="); ok {
				k, _ := strconv.Atoi(c)
				n += k
			}
		}
		return n
	}
	return 0
}

func (e logEntry) num(k string) float64 {
	f, _ := e.attrs[k].(float64)
	return f
}

// dur reads a duration attribute: slog's JSON handler writes nanoseconds.
func (e logEntry) dur(k string) time.Duration { return time.Duration(e.num(k)) }

func (e logEntry) str(k string) string {
	s, _ := e.attrs[k].(string)
	return s
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func msMedian(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return ms(s[len(s)/2])
}

// warmUpLvsd runs lvsd once on a small table: start, a reload, stop.
func (b *bench) warmUpLvsd(ctx context.Context, services, dests int) error {
	path, err := b.freshNS("warm")
	if err != nil {
		return err
	}
	r, err := b.newLvsdRun(ctx, path, services, dests)
	if err != nil {
		return err
	}
	defer r.close()
	if _, err := r.startAndWaitTable(ctx); err != nil {
		return err
	}
	mark := r.log.mark()
	if err := r.signal(syscall.SIGHUP); err != nil {
		return err
	}
	if _, _, err := r.log.wait(ctx, mark, time.Minute, "config reloaded", r.exited); err != nil {
		return err
	}
	if err := r.stop(ctx); err != nil {
		return err
	}
	return b.discard(ctx, path)
}
