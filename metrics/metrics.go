// Package metrics exports lvsd's Prometheus metrics. Current state (election
// state and owner, members, service quorum, backend health, weight and check
// latency, IPVS counters per service and backend) is read from a Source at
// scrape time, so it never goes stale; events (group transitions, reconcile
// operations and errors, reloads) are counted as they happen.
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

// Metrics holds lvsd's collectors, registered on their own registry.
type Metrics struct {
	reg *prometheus.Registry

	transitions    *prometheus.CounterVec
	reconcileOps   *prometheus.CounterVec
	reconcileErrs  *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	lastReloadTime prometheus.Gauge
}

// Option configures New.
type Option func(*options)

type options struct{ perBackend bool }

// PerBackend chooses whether a scrape carries the per-backend series
// (lvsd_ipvs_backend_*, lvsd_backend_up, lvsd_backend_weight and the health
// check series); the default is true. Without them a scrape of 10,000
// services × 10 backends is about a tenth of the series. Per-service,
// election, cluster, reconcile and reload series are always there.
func PerBackend(on bool) Option { return func(o *options) { o.perBackend = on } }

// New creates the collectors. Gauges of current state are read from src at
// scrape time, so they can never go stale; counters are pushed as events
// happen.
func New(src Source, log *slog.Logger, opts ...Option) *Metrics {
	o := options{perBackend: true}
	for _, opt := range opts {
		opt(&o)
	}
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.transitions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_vip_group_transitions_total", Help: "State changes of VIP groups on this node, by new state; transitions to master are failovers to this node."}, []string{"group", "state"})
	m.reconcileOps = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_reconcile_operations_total", Help: "IPVS writes made by the reconciler, by kind."}, []string{"op"})
	m.reconcileErrs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_reconcile_errors_total", Help: "IPVS writes that failed, by kind."}, []string{"op"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lvsd_config_reloads_total", Help: "Config reloads by result."}, []string{"result"})
	m.lastReloadTime = prometheus.NewGauge(prometheus.GaugeOpts{Name: "lvsd_config_last_reload_success_timestamp_seconds", Help: "When the config was last loaded successfully."})
	for _, c := range []prometheus.Collector{m.transitions, m.reconcileOps, m.reconcileErrs, m.reloads, m.lastReloadTime} {
		f(c)
	}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if src != nil {
		f(&stateCollector{src: src, log: log, perBackend: o.perBackend})
	}
	return m
}

// Registry exposes the registry (tests, extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// GroupTransition counts a state change of a group on this node.
func (m *Metrics) GroupTransition(group, to string) { m.transitions.WithLabelValues(group, to).Inc() }

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
