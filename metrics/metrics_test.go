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

type fakeSource struct {
	st       State
	stats    []ServiceStats
	stateErr error
	statsErr error
}

// The fake ignores the backends flag: the collector must leave out what
// it was told to leave out even when a source hands it over.
func (f fakeSource) State(context.Context, bool) (State, error) { return f.st, f.stateErr }
func (f fakeSource) IPVSStats(context.Context, bool) ([]ServiceStats, error) {
	return f.stats, f.statsErr
}

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

func sample() fakeSource {
	var st State
	st.Members.Alive, st.Members.Dead = 2, 1
	st.Groups = []GroupState{{Group: "web", State: "backup", Owner: "dir-b", Priority: 100, Override: "demote"}}
	st.Quorum = map[string]bool{"web-pcc": true}
	st.Backend = []BackendState{
		{Service: "web-pcc", Backend: "198.18.1.65:0", Up: false, Weight: -1, Checked: true, LastCheck: 3 * time.Millisecond, Checks: 42},
		{Service: "web-pcc", Backend: "198.18.1.66:0", Up: true, Weight: 1},
	}
	return fakeSource{st: st, stats: []ServiceStats{{
		Service:  "web-pcc",
		Counters: Counters{Connections: 7, PacketsIn: 70, BytesIn: 7000},
		Backends: []BackendStats{{Backend: "198.18.1.66:0", Counters: Counters{Connections: 5}, ActiveConns: 2, InactiveConns: 3}},
	}}}
}

func TestScrape(t *testing.T) {
	m := New(sample(), quiet())
	m.GroupTransition("web", "master")
	m.AddReconcile("add-dest", 10, 1)
	m.Reload(false, time.Now())
	body := scrape(t, m)
	for _, want := range []string{
		`lvsd_vip_group_state{group="web",state="backup"} 1`,
		`lvsd_vip_group_state{group="web",state="master"} 0`,
		`lvsd_vip_group_owner{group="web",owner="dir-b"} 1`,
		`lvsd_vip_group_priority{group="web"} 100`,
		`lvsd_vip_group_override{group="web",override="demote"} 1`,
		`lvsd_vip_group_override{group="web",override="promote"} 0`,
		`lvsd_vip_group_transitions_total{group="web",state="master"} 1`,
		`lvsd_cluster_members{state="alive"} 2`,
		`lvsd_cluster_members{state="dead"} 1`,
		`lvsd_service_quorum_up{service="web-pcc"} 1`,
		`lvsd_backend_up{backend="198.18.1.65:0",service="web-pcc"} 0`,
		`lvsd_backend_weight{backend="198.18.1.65:0",service="web-pcc"} -1`,
		`lvsd_healthcheck_last_duration_seconds{backend="198.18.1.65:0",service="web-pcc"} 0.003`,
		`lvsd_healthchecks_total{backend="198.18.1.65:0",service="web-pcc"} 42`,
		`lvsd_reconcile_operations_total{op="add-dest"} 10`,
		`lvsd_reconcile_errors_total{op="add-dest"} 1`,
		`lvsd_config_reloads_total{result="failure"} 1`,
		`lvsd_ipvs_service_connections_total{service="web-pcc"} 7`,
		`lvsd_ipvs_service_bytes_in_total{service="web-pcc"} 7000`,
		`lvsd_ipvs_backend_connections_total{backend="198.18.1.66:0",service="web-pcc"} 5`,
		`lvsd_ipvs_backend_active_connections{backend="198.18.1.66:0",service="web-pcc"} 2`,
		`lvsd_ipvs_backend_inactive_connections{backend="198.18.1.66:0",service="web-pcc"} 3`,
		`lvsd_scrape_error{source="ipvs"} 0`,
		`lvsd_scrape_error{source="state"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if strings.Contains(body, `lvsd_healthchecks_total{backend="198.18.1.66:0"`) {
		t.Error("an unchecked backend has a check counter")
	}
}

func TestPerBackendOff(t *testing.T) {
	m := New(sample(), quiet(), PerBackend(false))
	m.AddReconcile("add-dest", 1, 0)
	body := scrape(t, m)
	for _, want := range []string{
		`lvsd_vip_group_state{group="web",state="backup"} 1`,
		`lvsd_vip_group_owner{group="web",owner="dir-b"} 1`,
		`lvsd_cluster_members{state="alive"} 2`,
		`lvsd_service_quorum_up{service="web-pcc"} 1`,
		`lvsd_reconcile_operations_total{op="add-dest"} 1`,
		`lvsd_ipvs_service_connections_total{service="web-pcc"} 7`,
		`lvsd_ipvs_service_bytes_in_total{service="web-pcc"} 7000`,
		`lvsd_scrape_error{source="ipvs"} 0`,
		`lvsd_scrape_error{source="state"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	for _, gone := range []string{"lvsd_ipvs_backend_", "lvsd_backend_up", "lvsd_backend_weight", "lvsd_healthcheck", `backend="`} {
		if strings.Contains(body, gone) {
			t.Errorf("per_backend = false, but the scrape has %s", gone)
		}
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestSourceAskedForBackends checks the collector tells the source whether
// per-backend data is wanted, so lvsd does not build what is thrown away.
func TestSourceAskedForBackends(t *testing.T) {
	for _, on := range []bool{true, false} {
		src := &askSource{}
		scrape(t, New(src, quiet(), PerBackend(on)))
		if src.state != on || src.stats != on || src.calls != 2 {
			t.Errorf("PerBackend(%v): source asked state %v stats %v in %d calls", on, src.state, src.stats, src.calls)
		}
	}
}

type askSource struct {
	state, stats bool
	calls        int
}

func (a *askSource) State(_ context.Context, b bool) (State, error) {
	a.state, a.calls = b, a.calls+1
	return State{}, nil
}

func (a *askSource) IPVSStats(_ context.Context, b bool) ([]ServiceStats, error) {
	a.stats, a.calls = b, a.calls+1
	return nil, nil
}

func TestScrapeErrorsAreReported(t *testing.T) {
	m := New(fakeSource{stateErr: errors.New("shutting down"), statsErr: errors.New("netlink: no such family")}, quiet())
	body := scrape(t, m)
	for _, want := range []string{`lvsd_scrape_error{source="ipvs"} 1`, `lvsd_scrape_error{source="state"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

// TestNamingConventions lints every metric with Prometheus' own linter.
func TestNamingConventions(t *testing.T) {
	m := New(sample(), quiet())
	m.GroupTransition("g", "master")
	m.AddReconcile("add-dest", 1, 1)
	m.Reload(true, time.Now())
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
