package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/director/dptest"
)

// writeBigService writes include file f of a big config: services
// [f*per, (f+1)*per) with dests DR backends each (no checks); the first
// backend of service i has weight weights[i], or 1.
func writeBigService(b testing.TB, dir string, f, per, dests int, weights map[int]int) {
	var sb strings.Builder
	for i := f * per; i < (f+1)*per; i++ {
		fmt.Fprintf(&sb, "[[service]]\nname = \"svc-%d\"\naddress = \"198.18.%d.%d\"\nport = 80\nscheduler = \"rr\"\nforward = \"dr\"\n", i, i/250, i%250+1)
		for j := range dests {
			wt, ok := weights[i]
			if !ok || j > 0 {
				wt = 1
			}
			fmt.Fprintf(&sb, "  [[service.backend]]\n  address = \"198.19.255.%d\"\n  weight = %d\n", j+1, wt)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "conf.d", fmt.Sprintf("%03d.toml", f)), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReloadOneWeight reloads 10,000 services × 10 backends in 100
// include files after one backend's weight changed, against the in-memory
// kernel: lvsd's own share of the reload target (≤ 100 ms, ≤ 2 writes).
func BenchmarkReloadOneWeight(b *testing.B) {
	const services, dests, files = 10000, 10, 100
	per := services / files
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		b.Fatal(err)
	}
	main := fmt.Sprintf("include = [\"conf.d/*.toml\"]\n[node]\nname = \"bench\"\nstate_dir = %q\n[ipvs]\nresync_interval = \"0s\"\n[control]\nsocket = %q\n",
		filepath.Join(dir, "state"), filepath.Join(dir, "lvsd.sock"))
	if err := os.WriteFile(filepath.Join(dir, "lvsd.toml"), []byte(main), 0o644); err != nil {
		b.Fatal(err)
	}
	for f := range files {
		writeBigService(b, dir, f, per, dests, nil)
	}
	kern := &fakeKernel{Fake: dptest.New()}
	reload := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{ConfigPath: filepath.Join(dir, "lvsd.toml"), Log: slog.New(slog.DiscardHandler), Reload: reload,
			OpenKernel: func(context.Context, *slog.Logger) (Kernel, error) { return kern, nil }})
	}()
	defer func() { cancel(); <-done }()
	client := api.NewUnixClient(filepath.Join(dir, "lvsd.sock"))
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if _, err := client.Reload(context.Background()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("lvsd did not start")
		}
	}
	kern.ResetWrites()
	kern.RecordWrites(true)
	weights := map[int]int{}
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		svc := (i * 37) % services
		w, ok := weights[svc]
		if !ok {
			w = 1
		}
		weights[svc] = w%1000 + 1 // a different weight each time
		writeBigService(b, dir, svc/per, per, dests, weights)
		b.StartTimer()
		res, err := client.Reload(context.Background())
		if err != nil || !res.OK {
			b.Fatal(err, res.Errors)
		}
	}
	b.ReportMetric(float64(len(kern.Writes()))/float64(b.N), "writes/op")
}
