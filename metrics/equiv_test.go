package metrics

import (
	"context"
	"math/rand/v2"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// refCollector is the straightforward collector (one const metric per
// series, in the source's order) the batched, pre-sorted one replaced.
type refCollector struct{ src Source }

func (c refCollector) Describe(ch chan<- *prometheus.Desc) {
	(&stateCollector{perBackend: true}).Describe(ch)
}

func (c refCollector) Collect(ch chan<- prometheus.Metric) {
	ctx := context.Background()
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	st, _ := c.src.State(ctx, true)
	gauge(descScrapeErr, 0, "state")
	gauge(descMembers, float64(st.Members.Alive), "alive")
	gauge(descMembers, float64(st.Members.Dead), "dead")
	for _, g := range st.Groups {
		for _, s := range GroupStates {
			gauge(descGroupState, bool01(s == g.State), g.Group, s)
		}
		if g.Owner != "" {
			gauge(descGroupOwner, 1, g.Group, g.Owner)
		}
		for _, o := range GroupOverrides {
			gauge(descGroupOverride, bool01(o == g.Override), g.Group, o)
		}
		gauge(descGroupPrio, float64(g.Priority), g.Group)
	}
	for svc, up := range st.Quorum {
		gauge(descQuorum, bool01(up), svc)
	}
	for _, b := range st.Backend {
		gauge(descBackendUp, bool01(b.Up), b.Service, b.Backend)
		gauge(descBackendW, float64(b.Weight), b.Service, b.Backend)
		if b.Checked {
			gauge(descCheckSecs, b.LastCheck.Seconds(), b.Service, b.Backend)
			counter(descChecks, b.Checks, b.Service, b.Backend)
		}
	}
	stats, _ := c.src.IPVSStats(ctx, true)
	gauge(descScrapeErr, 0, "ipvs")
	for _, s := range stats {
		counter(descSvcConns, s.Counters.Connections, s.Service)
		counter(descSvcPktsIn, s.Counters.PacketsIn, s.Service)
		counter(descSvcPktsOut, s.Counters.PacketsOut, s.Service)
		counter(descSvcBytesIn, s.Counters.BytesIn, s.Service)
		counter(descSvcBytesOut, s.Counters.BytesOut, s.Service)
		for _, b := range s.Backends {
			counter(descDstConns, b.Counters.Connections, s.Service, b.Backend)
			counter(descDstPktsIn, b.Counters.PacketsIn, s.Service, b.Backend)
			counter(descDstPktsOut, b.Counters.PacketsOut, s.Service, b.Backend)
			counter(descDstBytesIn, b.Counters.BytesIn, s.Service, b.Backend)
			counter(descDstBytesOut, b.Counters.BytesOut, s.Service, b.Backend)
			gauge(descDstActive, float64(b.ActiveConns), s.Service, b.Backend)
			gauge(descDstInactive, float64(b.InactiveConns), s.Service, b.Backend)
		}
	}
}

// TestScrapeMatchesReference: the batched collector's scrape is byte for
// byte the straightforward one's, for a shuffled source with groups,
// unchecked and out-of-kernel backends, in text and OpenMetrics.
func TestScrapeMatchesReference(t *testing.T) {
	src := bigSource(300, 7)
	src.st.Groups = append(src.st.Groups, GroupState{Group: "db", State: "backup", Priority: 90, Override: "demote"})
	r := rand.New(rand.NewPCG(1, 2))
	r.Shuffle(len(src.st.Backend), func(i, j int) { src.st.Backend[i], src.st.Backend[j] = src.st.Backend[j], src.st.Backend[i] })
	r.Shuffle(len(src.stats), func(i, j int) { src.stats[i], src.stats[j] = src.stats[j], src.stats[i] })
	for i := range src.st.Backend {
		if i%5 == 0 {
			src.st.Backend[i].Checked, src.st.Backend[i].Weight, src.st.Backend[i].Up = false, -1, false
		}
	}
	src.stats[0].Backends = nil
	src.st.Backend[3].LastCheck = 1500 * time.Microsecond

	ours := prometheus.NewRegistry()
	ours.MustRegister(&stateCollector{src: src, log: quiet(), perBackend: true})
	ref := prometheus.NewRegistry()
	ref.MustRegister(refCollector{src: src})
	for _, accept := range []string{"", "application/openmetrics-text; version=1.0.0"} {
		var bodies [2]string
		for i, reg := range []*prometheus.Registry{ours, ref} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/metrics", nil)
			req.Header.Set("Accept", accept)
			promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}).ServeHTTP(rec, req)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			bodies[i] = rec.Body.String()
		}
		if bodies[0] != bodies[1] {
			t.Errorf("Accept %q: scrape differs from the reference collector's (%d vs %d bytes)", accept, len(bodies[0]), len(bodies[1]))
		}
		if len(bodies[0]) < 100000 {
			t.Errorf("Accept %q: only %d bytes; the source is not big enough to compare", accept, len(bodies[0]))
		}
	}
}
