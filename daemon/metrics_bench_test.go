package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/dptest"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/metrics"
	"github.com/lvsd/lvsd/opstate"
)

// BenchmarkMetricsSource10k is what a scrape asks of lvsd for 10,000
// services × 10 backends (no health checks) against the in-memory kernel:
// State runs on the loop, IPVSStats mostly off it.
func BenchmarkMetricsSource10k(b *testing.B) {
	const services, dests, files = 10000, 10, 100
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		b.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	main := fmt.Sprintf("include = [\"conf.d/*.toml\"]\n[node]\nname = \"bench\"\nstate_dir = %q\n[ipvs]\nresync_interval = \"0s\"\n[control]\nsocket = %q\n",
		state, filepath.Join(dir, "lvsd.sock"))
	path := filepath.Join(dir, "lvsd.toml")
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
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
	if e.cfg, err = e.loader.Load(path); err != nil {
		b.Fatal(err)
	}
	if err := e.startDirector(ctx); err != nil {
		b.Fatal(err)
	}
	defer e.stopDirector()
	go func() { // the loop, as far as do needs it
		for {
			select {
			case f := <-e.reqs:
				f()
			case <-ctx.Done():
				return
			}
		}
	}()
	src := metricsSource{e}
	for _, backends := range []bool{true, false} {
		b.Run(fmt.Sprintf("State/backends=%v", backends), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				st, err := src.State(ctx, backends)
				if err != nil || len(st.Quorum) != services || backends != (len(st.Backend) == services*dests) {
					b.Fatalf("state: %v, %d services, %d backends", err, len(st.Quorum), len(st.Backend))
				}
			}
		})
		b.Run(fmt.Sprintf("IPVSStats/backends=%v", backends), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				stats, err := src.IPVSStats(ctx, backends)
				if err != nil || len(stats) != services || backends != (len(stats[0].Backends) == dests) {
					b.Fatalf("stats: %v, %d services", err, len(stats))
				}
			}
		})
	}
}
