package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/dptest"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/metrics"
)

// BenchmarkMetricsSource10k is what a scrape asks of lvsd for 10,000
// services × 10 backends (no health checks) against the in-memory kernel:
// State runs on the loop, IPVSStats mostly off it.
func BenchmarkMetricsSource10k(b *testing.B) {
	const services, dests, files = 10000, 10, 100
	path, _, store := bigConfig(b, services, dests, files)
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
	var err error
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
