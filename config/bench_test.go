package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time. Benchmarks report it per
// op too ("cpu-ns/op"): on a shared 2-core machine wall time includes
// waiting for a core, CPU time does not.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter accumulates CPU time while the benchmark timer runs.
type cpuMeter struct {
	total, start time.Duration
	n            int
}

func (m *cpuMeter) begin() { m.start = cpuTime() }
func (m *cpuMeter) end()   { m.total += cpuTime() - m.start; m.n++ }
func (m *cpuMeter) report(b *testing.B) {
	if m.n > 0 {
		b.ReportMetric(float64(m.total.Nanoseconds())/float64(m.n), "cpu-ns/op")
	}
}

// The reload target: 10,000 services x 10 backends, a SIGHUP after one
// weight changed. Only the changed file is parsed again; the rest is stat
// calls and the cross-file checks.
const (
	benchServices = 10000
	benchBackends = 10
	benchFiles    = 100
)

func benchTree(b *testing.B, files int) (dir, main string) {
	b.Helper()
	tree := map[string]string{"lvsd.toml": "include = [\"conf.d/*.toml\"]\n[node]\nname = \"dir-a\"\ninterface = \"eth0\"\n"}
	per := benchServices / files
	for f := range files {
		tree[fmt.Sprintf("conf.d/%03d.toml", f)] = serviceFile(f, per, benchBackends, 1)
	}
	dir = writeDir(b, tree)
	return dir, filepath.Join(dir, "lvsd.toml")
}

func BenchmarkReloadOneChangedFile(b *testing.B) {
	dir, main := benchTree(b, benchFiles)
	var l Loader
	if _, err := l.Load(main); err != nil {
		b.Fatal(err)
	}
	per := benchServices / benchFiles
	var m cpuMeter
	defer m.report(b)
	for i := 0; b.Loop(); i++ {
		f, w := i%benchFiles, 2+i%2
		b.StopTimer()
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("conf.d/%03d.toml", f)), []byte(serviceFile(f, per, benchBackends, w)), 0o644); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		m.begin()
		cfg, err := l.Load(main)
		m.end()
		if err != nil {
			b.Fatal(err)
		}
		if got := cfg.Services[f*per].Backends[0].Weight; got != w {
			b.Fatalf("weight %d after reload, want %d", got, w)
		}
	}
}

func BenchmarkReloadUnchanged(b *testing.B) {
	_, main := benchTree(b, benchFiles)
	var l Loader
	if _, err := l.Load(main); err != nil {
		b.Fatal(err)
	}
	var m cpuMeter
	defer m.report(b)
	for b.Loop() {
		m.begin()
		_, err := l.Load(main)
		m.end()
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoadCold100Files(b *testing.B) {
	_, main := benchTree(b, benchFiles)
	var m cpuMeter
	defer m.report(b)
	for b.Loop() {
		var l Loader
		m.begin()
		_, err := l.Load(main)
		m.end()
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoadSingleFile(b *testing.B) {
	text := "[node]\nname = \"dir-a\"\ninterface = \"eth0\"\n" + serviceFile(0, benchServices, benchBackends, 1)
	dir := writeDir(b, map[string]string{"lvsd.toml": text})
	main := filepath.Join(dir, "lvsd.toml")
	b.SetBytes(int64(len(text)))
	var m cpuMeter
	defer m.report(b)
	for b.Loop() {
		var l Loader
		m.begin()
		cfg, err := l.Load(main)
		m.end()
		if err != nil {
			b.Fatal(err)
		}
		if n := len(cfg.Services); n != benchServices || strings.Count(text, "[[service.backend]]") != n*benchBackends {
			b.Fatalf("%d services", n)
		}
	}
}
