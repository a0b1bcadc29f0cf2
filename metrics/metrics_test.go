package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fakeStats struct {
	stats []ServiceStats
	err   error
}

func (f fakeStats) IPVSStats(context.Context) ([]ServiceStats, error) { return f.stats, f.err }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape status %d", rec.Code)
	}
	return rec.Body.String()
}

func TestPushedMetrics(t *testing.T) {
	m := New(nil, quiet())
	m.SetGroup("web", "master", "dir-a", 150)
	m.SetGroup("web", "backup", "dir-b", 100) // owner changes: old owner series must go
	m.GroupTransition("web", "master")
	m.SetMembers(2, 1)
	m.SetBackend("web-pcc", "198.18.1.65:0", false, -1)
	m.ObserveCheck("web-pcc", "tcp", false, 3*time.Millisecond)
	m.AddReconcile("add-dest", 10, 1)
	m.Reload(false, time.Now())
	m.SetServiceQuorum("web-pcc", true)
	body := scrape(t, m)
	for _, want := range []string{
		`lvsd_vip_group_state{group="web",state="backup"} 1`,
		`lvsd_vip_group_state{group="web",state="master"} 0`,
		`lvsd_vip_group_owner{group="web",owner="dir-b"} 1`,
		`lvsd_vip_group_priority{group="web"} 100`,
		`lvsd_vip_group_transitions_total{group="web",state="master"} 1`,
		`lvsd_cluster_members{state="alive"} 2`,
		`lvsd_backend_up{backend="198.18.1.65:0",service="web-pcc"} 0`,
		`lvsd_backend_weight{backend="198.18.1.65:0",service="web-pcc"} -1`,
		`lvsd_healthcheck_duration_seconds_count{service="web-pcc",type="tcp"} 1`,
		`lvsd_healthchecks_total{result="failure",service="web-pcc"} 1`,
		`lvsd_reconcile_operations_total{op="add-dest"} 10`,
		`lvsd_reconcile_errors_total{op="add-dest"} 1`,
		`lvsd_config_reloads_total{result="failure"} 1`,
		`lvsd_service_quorum_up{service="web-pcc"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if strings.Contains(body, `owner="dir-a"`) {
		t.Error("stale owner series kept")
	}
	m.DeleteService("web-pcc")
	if body := scrape(t, m); strings.Contains(body, `service="web-pcc"`) {
		t.Error("series of a deleted service kept")
	}
}

func TestIPVSCollector(t *testing.T) {
	src := fakeStats{stats: []ServiceStats{{
		Service:  "web-pcc",
		Counters: Counters{Connections: 7, PacketsIn: 70, BytesIn: 7000},
		Backends: []BackendStats{{Backend: "198.18.1.65:0", Counters: Counters{Connections: 5}, ActiveConns: 2, InactiveConns: 3}},
	}}}
	m := New(src, quiet())
	body := scrape(t, m)
	for _, want := range []string{
		`lvsd_ipvs_service_connections_total{service="web-pcc"} 7`,
		`lvsd_ipvs_service_bytes_in_total{service="web-pcc"} 7000`,
		`lvsd_ipvs_backend_connections_total{backend="198.18.1.65:0",service="web-pcc"} 5`,
		`lvsd_ipvs_backend_active_connections{backend="198.18.1.65:0",service="web-pcc"} 2`,
		`lvsd_ipvs_backend_inactive_connections{backend="198.18.1.65:0",service="web-pcc"} 3`,
		`lvsd_ipvs_scrape_error 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	m2 := New(fakeStats{err: errors.New("netlink: no such family")}, quiet())
	if body := scrape(t, m2); !strings.Contains(body, "lvsd_ipvs_scrape_error 1") {
		t.Error("a failed kernel read is not reported")
	}
}

// TestNamingConventions lints every metric with Prometheus' own linter.
func TestNamingConventions(t *testing.T) {
	m := New(fakeStats{stats: []ServiceStats{{Service: "s", Backends: []BackendStats{{Backend: "b"}}}}}, quiet())
	m.SetGroup("g", "master", "n", 1)
	m.GroupTransition("g", "master")
	m.SetMembers(1, 0)
	m.SetBackend("s", "b", true, 1)
	m.ObserveCheck("s", "tcp", true, time.Millisecond)
	m.AddReconcile("add-dest", 1, 1)
	m.Reload(true, time.Now())
	m.SetServiceQuorum("s", true)
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestServe(t *testing.T) {
	m := New(nil, quiet())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Serve(ctx, "127.0.0.1:0"); err != nil {
		t.Fatalf("serve with a cancelled context: %v", err)
	}
	if err := m.Serve(context.Background(), "256.0.0.1:1"); err == nil {
		t.Fatal("want an error for a bad listen address")
	}
}
