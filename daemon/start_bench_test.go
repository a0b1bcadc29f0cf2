package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/dptest"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/metrics"
	"github.com/lvsd/lvsd/opstate"
)

// BenchmarkStartCold10k is lvsd's start on an empty kernel, as the lab's
// "program from empty" figure measures it, minus the kernel's own work: a
// cold load of 10,000 services × 10 backends in 100 include files, the
// spec checks, compose of every service and the reconciler's adoption,
// writing the whole table into the in-memory kernel.
func BenchmarkStartCold10k(b *testing.B) {
	const services, dests, files = 10000, 10, 100
	path, state, store := bigConfig(b, services, dests, files)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		os.Remove(filepath.Join(state, "owned.json"))
		fake := dptest.New()
		fake.RecordWrites(false)
		kern := &fakeKernel{Fake: fake}
		e := &engine{
			opts: Options{ConfigPath: path, Log: log,
				OpenKernel: func(context.Context, *slog.Logger) (Kernel, error) { return kern, nil }},
			log: log, events: newEventLog(4096), reqs: make(chan func()), store: store, loopCtx: ctx,
			views: map[string][]backendView{}, quorum: map[string]healthcheck.State{}, inKernel: map[string]director.DesiredService{},
		}
		e.metrics = metrics.New(metricsSource{e}, log)
		b.StartTimer()

		cfg, err := e.loader.Load(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := checkSpecs(cfg); err != nil {
			b.Fatal(err)
		}
		e.cfg = cfg
		if err := e.startDirector(ctx); err != nil {
			b.Fatal(err)
		}

		b.StopTimer()
		if n := len(kern.Table()); n != services {
			b.Fatalf("%d services in the kernel, want %d", n, services)
		}
		e.stopDirector()
		b.StartTimer()
	}
}

func TestRelaxGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	origLimit := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(origLimit)
	restore, bound := relaxGC(400)
	if got := debug.SetGCPercent(400); got != 400 {
		t.Errorf("GOGC during start %d, want 400", got)
	}
	if got := debug.SetMemoryLimit(-1); got != origLimit {
		t.Errorf("memory limit %d before the first write, want %d", got, origLimit)
	}
	bound()
	if got := debug.SetMemoryLimit(-1); got <= 0 || got >= origLimit {
		t.Errorf("no memory bound from the first write: %d", got)
	}
	restore()
	if got := debug.SetGCPercent(50); got != 100 {
		t.Errorf("GOGC after %d, want 100 again", got)
	}
	if got := debug.SetMemoryLimit(-1); got != origLimit {
		t.Errorf("memory limit after %d, want %d again", got, origLimit)
	}
	restore() // once only
	if got := debug.SetGCPercent(-1); got != 50 {
		t.Errorf("a second restore changed GOGC to %d", got)
	}
	// GOGC=off (or a higher GOGC) is the operator's: left alone, and so is
	// the memory limit.
	restore, bound = relaxGC(400)
	bound()
	if got := debug.SetGCPercent(-1); got != -1 {
		t.Errorf("GOGC=off became %d", got)
	}
	if got := debug.SetMemoryLimit(-1); got != origLimit {
		t.Errorf("GOGC=off, yet memory limit %d", got)
	}
	restore()
	if got := debug.SetGCPercent(800); got != -1 {
		t.Errorf("GOGC=off restored as %d", got)
	}
	restore, _ = relaxGC(400)
	restore()
	if got := debug.SetGCPercent(100); got != 800 {
		t.Errorf("GOGC=800 became %d", got)
	}
	// An operator's lower GOMEMLIMIT stays.
	debug.SetMemoryLimit(1 << 20)
	restore, bound = relaxGC(400)
	bound()
	if got := debug.SetMemoryLimit(-1); got != 1<<20 {
		t.Errorf("GOMEMLIMIT 1 MiB became %d", got)
	}
	restore()
	debug.SetMemoryLimit(origLimit)
}

// Composing a large table on every CPU gives what composing it one service
// at a time gives: the same desired state, quorum states and events, in
// config order. (Run with -race: the parallel part shares the engine.)
func TestComposeAllInParallel(t *testing.T) {
	dir := t.TempDir()
	var sb strings.Builder
	sb.WriteString("[node]\nname = \"a\"\n")
	for i := range 2*parallelMin + 17 {
		fmt.Fprintf(&sb, "[[service]]\nname = \"svc-%d\"\naddress = \"198.18.%d.%d\"\nport = 80\n", i, i/250, i%250+1)
		switch i % 4 {
		case 1:
			sb.WriteString("alpha = true\nsorry_server = \"198.18.255.1\"\n[service.check]\ntype = \"tcp\"\n")
		case 2:
			sb.WriteString("quorum = 2\non_failure = \"inhibit\"\nalpha = true\n[service.check]\ntype = \"tcp\"\n")
		case 3:
			sb.WriteString("quorum = 1\n")
		}
		for j := range 3 {
			fmt.Fprintf(&sb, "[[service.backend]]\naddress = \"198.19.%d.%d\"\nweight = %d\n", 2-j, i%250+1, j+1)
		}
	}
	path := filepath.Join(dir, "lvsd.toml")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	compose := func(procs int) string {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
		e := &engine{log: slog.New(slog.DiscardHandler), events: newEventLog(4096), cfg: cfg,
			views: map[string][]backendView{}, quorum: map[string]healthcheck.State{}}
		for _, s := range cfg.Services {
			e.views[s.Name] = effectiveBackends(s, nil)
		}
		desired := e.composeAll()
		var out strings.Builder
		fmt.Fprintln(&out, desired)
		for _, s := range cfg.Services {
			fmt.Fprintln(&out, s.Name, e.quorum[s.Name])
		}
		for _, ev := range e.events.since(time.Time{}, 4096) {
			fmt.Fprintln(&out, ev.Subject, ev.From, ev.To, ev.Reason)
		}
		return out.String()
	}
	one, all := compose(1), compose(4)
	if one != all {
		t.Fatal("composing in parallel differs from composing in order")
	}
	for _, want := range []string{"\nsvc-2 down\n", "\nsvc-3 up\n", "\nsvc-2 unknown down healthy weight 0 < 2", "\nsvc-3 unknown up healthy weight 6 >= 1"} {
		if !strings.Contains(one, want) {
			t.Errorf("no %q in:\n%.400s", want, one[strings.LastIndex(one, "up\nsvc"):])
		}
	}
}

// bigConfig writes a config of services × dests in files include files
// (as the lab's 10k figures use) with a state directory, and opens its
// operator store: the setup the 10k benchmarks share.
func bigConfig(b *testing.B, services, dests, files int) (path, state string, store *opstate.Store) {
	b.Helper()
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		b.Fatal(err)
	}
	state = filepath.Join(dir, "state")
	main := fmt.Sprintf("include = [\"conf.d/*.toml\"]\n[node]\nname = \"bench\"\nstate_dir = %q\n[ipvs]\nresync_interval = \"0s\"\n[control]\nsocket = %q\n",
		state, filepath.Join(dir, "lvsd.sock"))
	path = filepath.Join(dir, "lvsd.toml")
	if err := os.WriteFile(path, []byte(main), 0o644); err != nil {
		b.Fatal(err)
	}
	for f := range files {
		writeBigService(b, dir, f, services/files, dests, nil)
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		b.Fatal(err)
	}
	store, err := opstate.Open("bench", filepath.Join(state, "runtime.json"))
	if err != nil {
		b.Fatal(err)
	}
	return path, state, store
}
