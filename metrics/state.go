package metrics

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Counters are an IPVS object's kernel counters.
type Counters struct {
	Connections uint64
	PacketsIn   uint64
	PacketsOut  uint64
	BytesIn     uint64
	BytesOut    uint64
}

// BackendStats are one destination's kernel counters.
type BackendStats struct {
	Backend       string
	Counters      Counters
	ActiveConns   int
	InactiveConns int
}

// ServiceStats are one lvsd-owned virtual service's kernel counters.
type ServiceStats struct {
	Service  string // lvsd's service name
	Counters Counters
	Backends []BackendStats
}

// BackendState is what lvsd thinks of one backend.
type BackendState struct {
	Service, Backend string
	Up               bool          // health check passes, or none
	Weight           int           // weight lvsd wants in IPVS; -1 when absent
	Checked          bool          // has a health check
	LastCheck        time.Duration // latency of the last check
	Checks           uint64        // checks run so far
}

// GroupState is one VIP group on this node.
type GroupState struct {
	Group, State, Owner string
	Priority            int
}

// State is lvsd's current state as the metrics show it.
type State struct {
	Members struct{ Alive, Dead int }
	Groups  []GroupState
	Quorum  map[string]bool // service → quorum up
	Backend []BackendState
}

// Source answers scrapes. IPVSStats may be slow (a kernel dump). With
// backends false the collector shows no per-backend series, so the source
// may leave State.Backend and ServiceStats.Backends empty.
type Source interface {
	State(ctx context.Context, backends bool) (State, error)
	IPVSStats(ctx context.Context, backends bool) ([]ServiceStats, error)
}

// GroupStates are the states a VIP group can be in; each gets a series so
// alerts can match on state="master".
var GroupStates = []string{"master", "backup", "fault", "stopped"}

var (
	svcLabels  = []string{"service"}
	destLabels = []string{"service", "backend"}

	descGroupState = prometheus.NewDesc("lvsd_vip_group_state", "1 for the VIP group's current state on this node, 0 for the others.", []string{"group", "state"}, nil)
	descGroupOwner = prometheus.NewDesc("lvsd_vip_group_owner", "1 for the member this node believes owns the VIP group.", []string{"group", "owner"}, nil)
	descGroupPrio  = prometheus.NewDesc("lvsd_vip_group_priority", "Effective election priority of this node for the VIP group.", []string{"group"}, nil)
	descMembers    = prometheus.NewDesc("lvsd_cluster_members", "Cluster members by liveness as seen by this node.", []string{"state"}, nil)
	descQuorum     = prometheus.NewDesc("lvsd_service_quorum_up", "1 when the service's healthy weight meets its quorum.", svcLabels, nil)
	descBackendUp  = prometheus.NewDesc("lvsd_backend_up", "1 when the backend's health check passes (or it has none), 0 when it fails.", destLabels, nil)
	descBackendW   = prometheus.NewDesc("lvsd_backend_weight", "Weight lvsd wants in IPVS for the backend; -1 when it is not in IPVS.", destLabels, nil)
	descCheckSecs  = prometheus.NewDesc("lvsd_healthcheck_last_duration_seconds", "Latency of the backend's last health check.", destLabels, nil)
	descChecks     = prometheus.NewDesc("lvsd_healthchecks_total", "Health checks run against the backend.", destLabels, nil)

	descSvcConns    = prometheus.NewDesc("lvsd_ipvs_service_connections_total", "Connections scheduled by the virtual service (kernel counter).", svcLabels, nil)
	descSvcPktsIn   = prometheus.NewDesc("lvsd_ipvs_service_packets_in_total", "Incoming packets of the virtual service.", svcLabels, nil)
	descSvcPktsOut  = prometheus.NewDesc("lvsd_ipvs_service_packets_out_total", "Outgoing packets of the virtual service (NAT only).", svcLabels, nil)
	descSvcBytesIn  = prometheus.NewDesc("lvsd_ipvs_service_bytes_in_total", "Incoming bytes of the virtual service.", svcLabels, nil)
	descSvcBytesOut = prometheus.NewDesc("lvsd_ipvs_service_bytes_out_total", "Outgoing bytes of the virtual service (NAT only).", svcLabels, nil)
	descDstConns    = prometheus.NewDesc("lvsd_ipvs_backend_connections_total", "Connections scheduled to the backend.", destLabels, nil)
	descDstPktsIn   = prometheus.NewDesc("lvsd_ipvs_backend_packets_in_total", "Incoming packets forwarded to the backend.", destLabels, nil)
	descDstPktsOut  = prometheus.NewDesc("lvsd_ipvs_backend_packets_out_total", "Outgoing packets from the backend (NAT only).", destLabels, nil)
	descDstBytesIn  = prometheus.NewDesc("lvsd_ipvs_backend_bytes_in_total", "Incoming bytes forwarded to the backend.", destLabels, nil)
	descDstBytesOut = prometheus.NewDesc("lvsd_ipvs_backend_bytes_out_total", "Outgoing bytes from the backend (NAT only).", destLabels, nil)
	descDstActive   = prometheus.NewDesc("lvsd_ipvs_backend_active_connections", "Active connections to the backend.", destLabels, nil)
	descDstInactive = prometheus.NewDesc("lvsd_ipvs_backend_inactive_connections", "Inactive connections (and persistence templates) of the backend.", destLabels, nil)
	descScrapeErr   = prometheus.NewDesc("lvsd_scrape_error", "1 when reading lvsd's state (source=state) or the kernel's IPVS counters (source=ipvs) failed on this scrape.", []string{"source"}, nil)
)

type stateCollector struct {
	src        Source
	log        *slog.Logger
	perBackend bool
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGroupState, descGroupOwner, descGroupPrio, descMembers, descQuorum,
		descSvcConns, descSvcPktsIn, descSvcPktsOut, descSvcBytesIn, descSvcBytesOut, descScrapeErr} {
		ch <- d
	}
	if c.perBackend {
		for _, d := range []*prometheus.Desc{descBackendUp, descBackendW, descCheckSecs, descChecks,
			descDstConns, descDstPktsIn, descDstPktsOut, descDstBytesIn, descDstBytesOut, descDstActive, descDstInactive} {
			ch <- d
		}
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	st, err := c.src.State(ctx, c.perBackend)
	gauge(descScrapeErr, bool01(err != nil), "state")
	if err != nil {
		c.log.Warn("read lvsd state for metrics", "err", err)
	} else {
		gauge(descMembers, float64(st.Members.Alive), "alive")
		gauge(descMembers, float64(st.Members.Dead), "dead")
		for _, g := range st.Groups {
			for _, s := range GroupStates {
				gauge(descGroupState, bool01(s == g.State), g.Group, s)
			}
			if g.Owner != "" {
				gauge(descGroupOwner, 1, g.Group, g.Owner)
			}
			gauge(descGroupPrio, float64(g.Priority), g.Group)
		}
		for svc, up := range st.Quorum {
			gauge(descQuorum, bool01(up), svc)
		}
		for _, b := range st.Backend {
			if !c.perBackend {
				break
			}
			gauge(descBackendUp, bool01(b.Up), b.Service, b.Backend)
			gauge(descBackendW, float64(b.Weight), b.Service, b.Backend)
			if b.Checked {
				gauge(descCheckSecs, b.LastCheck.Seconds(), b.Service, b.Backend)
				counter(descChecks, b.Checks, b.Service, b.Backend)
			}
		}
	}
	stats, err := c.src.IPVSStats(ctx, c.perBackend)
	gauge(descScrapeErr, bool01(err != nil), "ipvs")
	if err != nil {
		c.log.Warn("read IPVS counters for metrics", "err", err)
		return
	}
	for _, s := range stats {
		counter(descSvcConns, s.Counters.Connections, s.Service)
		counter(descSvcPktsIn, s.Counters.PacketsIn, s.Service)
		counter(descSvcPktsOut, s.Counters.PacketsOut, s.Service)
		counter(descSvcBytesIn, s.Counters.BytesIn, s.Service)
		counter(descSvcBytesOut, s.Counters.BytesOut, s.Service)
		for _, b := range s.Backends {
			if !c.perBackend {
				break
			}
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
