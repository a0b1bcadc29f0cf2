// Package metrics exports lvsd's Prometheus metrics: election state and
// owner, failovers, members, backend health, check latency, reconcile
// operations and errors (pushed by the daemon as they happen), and IPVS
// counters per service and backend (pulled from the kernel at scrape time).
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// GroupStates are the states a VIP group can be in; each gets a series so
// alerts can match on state="master".
var GroupStates = []string{"master", "backup", "fault", "stopped"}

// Metrics holds lvsd's collectors, registered on their own registry.
type Metrics struct {
	reg *prometheus.Registry

	groupState     *prometheus.GaugeVec
	groupOwner     *prometheus.GaugeVec
	groupPriority  *prometheus.GaugeVec
	transitions    *prometheus.CounterVec
	members        *prometheus.GaugeVec
	backendUp      *prometheus.GaugeVec
	backendWeight  *prometheus.GaugeVec
	checkDuration  *prometheus.HistogramVec
	checks         *prometheus.CounterVec
	reconcileOps   *prometheus.CounterVec
	reconcileErrs  *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	serviceQuorum  *prometheus.GaugeVec
	lastReloadTime prometheus.Gauge
}

// New creates the collectors. stats may be nil (no services, no IPVS).
func New(stats StatsSource, log *slog.Logger) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.groupState = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lvsd_vip_group_state", Help: "1 for the VIP group's current state on this node, 0 for the others."}, []string{"group", "state"})
	m.groupOwner = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lvsd_vip_group_owner", Help: "1 for the member this node believes owns the VIP group."}, []string{"group", "owner"})
	m.groupPriority = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lvsd_vip_group_priority", Help: "Effective election priority of this node for the VIP group."}, []string{"group"})
	m.transitions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_vip_group_transitions_total", Help: "State changes of VIP groups on this node, by new state; transitions to master are failovers to this node."}, []string{"group", "state"})
	m.members = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lvsd_cluster_members", Help: "Configured cluster members by liveness as seen by this node."}, []string{"state"})
	m.backendUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lvsd_backend_up", Help: "1 when the backend's health check passes (or it has none), 0 when it fails."}, []string{"service", "backend"})
	m.backendWeight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lvsd_backend_weight", Help: "Weight lvsd wants in IPVS for the backend; -1 when it is not in IPVS."}, []string{"service", "backend"})
	m.checkDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lvsd_healthcheck_duration_seconds", Help: "Health check latency by service and check type.", Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"service", "type"})
	m.checks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_healthchecks_total", Help: "Health checks run by service and result."}, []string{"service", "result"})
	m.reconcileOps = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_reconcile_operations_total", Help: "IPVS writes made by the reconciler, by kind."}, []string{"op"})
	m.reconcileErrs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_reconcile_errors_total", Help: "IPVS writes that failed, by kind."}, []string{"op"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_config_reloads_total", Help: "Config reloads by result."}, []string{"result"})
	m.serviceQuorum = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lvsd_service_quorum_up", Help: "1 when the service's healthy weight meets its quorum."}, []string{"service"})
	m.lastReloadTime = prometheus.NewGauge(prometheus.GaugeOpts{Name: "lvsd_config_last_reload_success_timestamp_seconds", Help: "When the config was last loaded successfully."})
	for _, c := range []prometheus.Collector{m.groupState, m.groupOwner, m.groupPriority, m.transitions, m.members, m.backendUp, m.backendWeight, m.checkDuration, m.checks, m.reconcileOps, m.reconcileErrs, m.reloads, m.serviceQuorum, m.lastReloadTime} {
		f(c)
	}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if stats != nil {
		f(&ipvsCollector{src: stats, log: log})
	}
	return m
}

// Registry exposes the registry (tests, extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetGroup records a VIP group's state, believed owner and priority.
func (m *Metrics) SetGroup(group, state, owner string, priority int) {
	for _, s := range GroupStates {
		v := 0.0
		if s == state {
			v = 1
		}
		m.groupState.WithLabelValues(group, s).Set(v)
	}
	m.groupOwner.DeletePartialMatch(prometheus.Labels{"group": group})
	if owner != "" {
		m.groupOwner.WithLabelValues(group, owner).Set(1)
	}
	m.groupPriority.WithLabelValues(group).Set(float64(priority))
}

// GroupTransition counts a state change of a group on this node.
func (m *Metrics) GroupTransition(group, to string) { m.transitions.WithLabelValues(group, to).Inc() }

// SetMembers records how many configured members are alive and dead.
func (m *Metrics) SetMembers(alive, dead int) {
	m.members.WithLabelValues("alive").Set(float64(alive))
	m.members.WithLabelValues("dead").Set(float64(dead))
}

// SetBackend records a backend's health and the weight lvsd wants for it
// (-1: not in IPVS).
func (m *Metrics) SetBackend(service, backend string, up bool, weight int) {
	v := 0.0
	if up {
		v = 1
	}
	m.backendUp.WithLabelValues(service, backend).Set(v)
	m.backendWeight.WithLabelValues(service, backend).Set(float64(weight))
}

// DeleteService drops every series of a service removed from the config.
func (m *Metrics) DeleteService(service string) {
	l := prometheus.Labels{"service": service}
	m.backendUp.DeletePartialMatch(l)
	m.backendWeight.DeletePartialMatch(l)
	m.checkDuration.DeletePartialMatch(l)
	m.checks.DeletePartialMatch(l)
	m.serviceQuorum.DeletePartialMatch(l)
}

// DeleteBackend drops a removed backend's series.
func (m *Metrics) DeleteBackend(service, backend string) {
	m.backendUp.DeleteLabelValues(service, backend)
	m.backendWeight.DeleteLabelValues(service, backend)
}

// ObserveCheck records one health check.
func (m *Metrics) ObserveCheck(service, kind string, ok bool, d time.Duration) {
	m.checkDuration.WithLabelValues(service, kind).Observe(d.Seconds())
	res := "failure"
	if ok {
		res = "success"
	}
	m.checks.WithLabelValues(service, res).Inc()
}

// AddReconcile counts IPVS writes and failures of one kind (e.g. "add-dest").
func (m *Metrics) AddReconcile(op string, done, failed int) {
	if done > 0 {
		m.reconcileOps.WithLabelValues(op).Add(float64(done))
	}
	if failed > 0 {
		m.reconcileErrs.WithLabelValues(op).Add(float64(failed))
	}
}

// Reload counts a reload attempt.
func (m *Metrics) Reload(ok bool, at time.Time) {
	if ok {
		m.reloads.WithLabelValues("success").Inc()
		m.lastReloadTime.Set(float64(at.UnixNano()) / 1e9)
		return
	}
	m.reloads.WithLabelValues("failure").Inc()
}

// SetServiceQuorum records whether a service meets its quorum.
func (m *Metrics) SetServiceQuorum(service string, up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.serviceQuorum.WithLabelValues(service).Set(v)
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return mux
}

// Serve serves /metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	hs := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	}
}
