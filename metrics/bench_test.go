package metrics

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"
)

// bigSource is services × dests backends, all checked and all in the
// kernel with non-zero counters: the scale a full scrape has to carry.
func bigSource(services, dests int) fakeSource {
	var f fakeSource
	f.st.Members.Alive = 2
	f.st.Groups = []GroupState{{Group: "web", State: "master", Owner: "dir-a", Priority: 100}}
	f.st.Quorum = make(map[string]bool, services)
	f.st.Backend = make([]BackendState, 0, services*dests)
	f.stats = make([]ServiceStats, 0, services)
	for i := range services {
		svc := fmt.Sprintf("svc-%d", i)
		f.st.Quorum[svc] = true
		ss := ServiceStats{Service: svc, Counters: Counters{Connections: uint64(i) * 10, PacketsIn: uint64(i) * 100, BytesIn: uint64(i) * 10000}}
		for j := range dests {
			be := fmt.Sprintf("198.19.%d.%d:80", j, i%250+1)
			f.st.Backend = append(f.st.Backend, BackendState{Service: svc, Backend: be, Up: true, Weight: 1, Checked: true,
				LastCheck: time.Duration(i+j) * time.Microsecond, Checks: uint64(i + j)})
			ss.Backends = append(ss.Backends, BackendStats{Backend: be, Counters: Counters{Connections: uint64(j), PacketsIn: uint64(j) * 10, BytesIn: uint64(j) * 1000},
				ActiveConns: j, InactiveConns: 2 * j})
		}
		f.stats = append(f.stats, ss)
	}
	return f
}

// BenchmarkScrape10k is one /metrics scrape (text format, as Prometheus
// asks for it without compression) of 10,000 services × 10 backends.
func BenchmarkScrape10k(b *testing.B) {
	m := New(bigSource(10000, 10), quiet())
	h := m.Handler()
	b.ReportAllocs()
	var n int
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != 200 {
			b.Fatalf("scrape status %d", rec.Code)
		}
		n = rec.Body.Len()
	}
	b.ReportMetric(float64(n)/1e6, "MB/scrape")
}

// BenchmarkGather10k is the registry's part of a scrape: collecting and
// sorting every series, without the text encoding.
func BenchmarkGather10k(b *testing.B) {
	m := New(bigSource(10000, 10), quiet())
	b.ReportAllocs()
	var n int
	for b.Loop() {
		mfs, err := m.Registry().Gather()
		if err != nil {
			b.Fatal(err)
		}
		n = 0
		for _, mf := range mfs {
			n += len(mf.Metric)
		}
	}
	b.ReportMetric(float64(n), "series")
}
