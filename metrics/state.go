package metrics

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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
	Override            string // "demote", "promote" or "" (none)
}

// GroupOverrides are the operator overrides a group can carry on a node;
// each gets a series so a forgotten demote can be alerted on.
var GroupOverrides = []string{"demote", "promote"}

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

	descGroupState    = prometheus.NewDesc("lvsd_vip_group_state", "1 for the VIP group's current state on this node, 0 for the others.", []string{"group", "state"}, nil)
	descGroupOverride = prometheus.NewDesc("lvsd_vip_group_override", "1 for the operator override (demote, promote) the VIP group carries on this node, kept until lvsctl clear; 0 for the other.", []string{"group", "override"}, nil)
	descGroupOwner    = prometheus.NewDesc("lvsd_vip_group_owner", "1 for the member this node believes owns the VIP group.", []string{"group", "owner"}, nil)
	descGroupPrio     = prometheus.NewDesc("lvsd_vip_group_priority", "Effective election priority of this node for the VIP group.", []string{"group"}, nil)
	descMembers       = prometheus.NewDesc("lvsd_cluster_members", "Cluster members by liveness as seen by this node.", []string{"state"}, nil)
	descQuorum        = prometheus.NewDesc("lvsd_service_quorum_up", "1 when the service's healthy weight meets its quorum.", svcLabels, nil)
	descBackendUp     = prometheus.NewDesc("lvsd_backend_up", "1 when the backend's health check passes (or it has none), 0 when it fails.", destLabels, nil)
	descBackendW      = prometheus.NewDesc("lvsd_backend_weight", "Weight lvsd wants in IPVS for the backend; -1 when it is not in IPVS.", destLabels, nil)
	descCheckSecs     = prometheus.NewDesc("lvsd_healthcheck_last_duration_seconds", "Latency of the backend's last health check.", destLabels, nil)
	descChecks        = prometheus.NewDesc("lvsd_healthchecks_total", "Health checks run against the backend.", destLabels, nil)

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
	for _, d := range []*prometheus.Desc{descGroupState, descGroupOwner, descGroupOverride, descGroupPrio, descMembers, descQuorum,
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

// A scrape of 10,000 services × 10 backends is over a million series. The
// collector keeps their cost down in two ways:
//
//   - Each family's series are sent in the order the registry sorts them
//     in (by label values, labels by name: backend, then service), so its
//     sort of every family is a linear pass instead of O(n log n) over
//     pointers scattered through the heap, which was a third of a scrape.
//   - A series is a slot in a batch allocated per scrape, not a const
//     metric with its own label pairs: the label pairs of a service or a
//     backend are made once and shared by all of its families (the
//     registry treats them as immutable), and nothing is validated twice
//     (the registry checks names and UTF-8 of every series anyway).
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e := &emitter{ch: ch}
	st, err := c.src.State(ctx, c.perBackend)
	e.gauge(descScrapeErr, bool01(err != nil), e.labels(e.pair(&lnSource, "state")))
	if err != nil {
		c.log.Warn("read lvsd state for metrics", "err", err)
	} else {
		e.gauge(descMembers, float64(st.Members.Alive), e.labels(e.pair(&lnState, "alive")))
		e.gauge(descMembers, float64(st.Members.Dead), e.labels(e.pair(&lnState, "dead")))
		for _, g := range st.Groups {
			group := e.pair(&lnGroup, g.Group)
			for _, s := range GroupStates {
				e.gauge(descGroupState, bool01(s == g.State), e.labels(group, e.pair(&lnState, s)))
			}
			if g.Owner != "" {
				e.gauge(descGroupOwner, 1, e.labels(group, e.pair(&lnOwner, g.Owner)))
			}
			for _, o := range GroupOverrides {
				e.gauge(descGroupOverride, bool01(o == g.Override), e.labels(group, e.pair(&lnOverride, o)))
			}
			e.gauge(descGroupPrio, float64(g.Priority), e.labels(group))
		}
		svcs := make([]string, 0, len(st.Quorum))
		for svc := range st.Quorum {
			svcs = append(svcs, svc)
		}
		slices.Sort(svcs)
		for _, svc := range svcs {
			e.gauge(descQuorum, bool01(st.Quorum[svc]), e.labels(e.pair(&lnService, svc)))
		}
		if c.perBackend {
			c.backendStates(e, st.Backend)
		}
	}
	stats, err := c.src.IPVSStats(ctx, c.perBackend)
	e.gauge(descScrapeErr, bool01(err != nil), e.labels(e.pair(&lnSource, "ipvs")))
	if err != nil {
		c.log.Warn("read IPVS counters for metrics", "err", err)
		return
	}
	c.ipvs(e, stats)
}

// backendStates sends the health and weight series of every backend.
func (c *stateCollector) backendStates(e *emitter, bs []BackendState) {
	order := make([]int32, len(bs))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(i, j int32) int {
		return cmpBackend(bs[i].Backend, bs[i].Service, bs[j].Backend, bs[j].Service)
	})
	// A service's backends usually come together: one label pair each.
	svcPairs := make(map[string]*dto.LabelPair)
	for _, i := range order {
		b := &bs[i]
		sp := svcPairs[b.Service]
		if sp == nil {
			sp = e.pair(&lnService, b.Service)
			svcPairs[b.Service] = sp
		}
		l := e.labels(e.pair(&lnBackend, b.Backend), sp)
		e.gauge(descBackendUp, bool01(b.Up), l)
		e.gauge(descBackendW, float64(b.Weight), l)
		if b.Checked {
			e.gauge(descCheckSecs, b.LastCheck.Seconds(), l)
			e.counter(descChecks, float64(b.Checks), l)
		}
	}
}

// ipvs sends the kernel's counters of every service and (when asked for)
// backend.
func (c *stateCollector) ipvs(e *emitter, stats []ServiceStats) {
	svcOrder := make([]int32, len(stats))
	nb := 0
	for i := range svcOrder {
		svcOrder[i] = int32(i)
		nb += len(stats[i].Backends)
	}
	slices.SortFunc(svcOrder, func(i, j int32) int { return strings.Compare(stats[i].Service, stats[j].Service) })
	svcLabels := make([][]*dto.LabelPair, len(stats))
	for _, i := range svcOrder {
		s := &stats[i]
		l := e.labels(e.pair(&lnService, s.Service))
		svcLabels[i] = l
		e.counter(descSvcConns, float64(s.Counters.Connections), l)
		e.counter(descSvcPktsIn, float64(s.Counters.PacketsIn), l)
		e.counter(descSvcPktsOut, float64(s.Counters.PacketsOut), l)
		e.counter(descSvcBytesIn, float64(s.Counters.BytesIn), l)
		e.counter(descSvcBytesOut, float64(s.Counters.BytesOut), l)
	}
	if !c.perBackend || nb == 0 {
		return
	}
	type ref struct{ s, b int32 }
	order := make([]ref, 0, nb)
	for i := range stats {
		for j := range stats[i].Backends {
			order = append(order, ref{int32(i), int32(j)})
		}
	}
	slices.SortFunc(order, func(x, y ref) int {
		return cmpBackend(stats[x.s].Backends[x.b].Backend, stats[x.s].Service, stats[y.s].Backends[y.b].Backend, stats[y.s].Service)
	})
	for _, r := range order {
		b := &stats[r.s].Backends[r.b]
		l := e.labels(e.pair(&lnBackend, b.Backend), svcLabels[r.s][0])
		e.counter(descDstConns, float64(b.Counters.Connections), l)
		e.counter(descDstPktsIn, float64(b.Counters.PacketsIn), l)
		e.counter(descDstPktsOut, float64(b.Counters.PacketsOut), l)
		e.counter(descDstBytesIn, float64(b.Counters.BytesIn), l)
		e.counter(descDstBytesOut, float64(b.Counters.BytesOut), l)
		e.gauge(descDstActive, float64(b.ActiveConns), l)
		e.gauge(descDstInactive, float64(b.InactiveConns), l)
	}
}

// cmpBackend orders per-backend series as the registry does: by the value
// of label "backend", then of "service".
func cmpBackend(b1, s1, b2, s2 string) int {
	if c := strings.Compare(b1, b2); c != 0 {
		return c
	}
	return strings.Compare(s1, s2)
}

// Label names, shared by every label pair that has them.
var lnService, lnBackend, lnGroup, lnState, lnOwner, lnSource, lnOverride = "service", "backend", "group", "state", "owner", "source", "override"

// batch is how many series, label pairs or label slots an emitter
// allocates at once.
const batch = 4096

// emitter sends one scrape's series, carving them and their label pairs
// out of batches.
type emitter struct {
	ch       chan<- prometheus.Metric
	counters []counterSeries
	gauges   []gaugeSeries
	pairs    []labelPair
	slots    []*dto.LabelPair
}

type labelPair struct {
	dto.LabelPair
	value string
}

// pair makes a label pair; name must outlive the scrape (a package
// variable).
func (e *emitter) pair(name *string, value string) *dto.LabelPair {
	if len(e.pairs) == 0 {
		e.pairs = make([]labelPair, batch)
	}
	p := &e.pairs[0]
	e.pairs = e.pairs[1:]
	p.value = value
	p.Name, p.Value = name, &p.value
	return &p.LabelPair
}

// labels makes a label set of pairs, which must be sorted by name.
func (e *emitter) labels(pairs ...*dto.LabelPair) []*dto.LabelPair {
	if len(e.slots) < len(pairs) {
		e.slots = make([]*dto.LabelPair, batch)
	}
	l := e.slots[:len(pairs):len(pairs)]
	e.slots = e.slots[len(pairs):]
	copy(l, pairs)
	return l
}

func (e *emitter) counter(d *prometheus.Desc, v float64, l []*dto.LabelPair) {
	if len(e.counters) == 0 {
		e.counters = make([]counterSeries, batch)
	}
	s := &e.counters[0]
	e.counters = e.counters[1:]
	s.desc, s.labels, s.v = d, l, v
	s.c.Value = &s.v
	e.ch <- s
}

func (e *emitter) gauge(d *prometheus.Desc, v float64, l []*dto.LabelPair) {
	if len(e.gauges) == 0 {
		e.gauges = make([]gaugeSeries, batch)
	}
	s := &e.gauges[0]
	e.gauges = e.gauges[1:]
	s.desc, s.labels, s.v = d, l, v
	s.g.Value = &s.v
	e.ch <- s
}

// counterSeries and gaugeSeries are one sample each; the registry reads
// them once, on the scrape that made them.
type counterSeries struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	v      float64
	c      dto.Counter
}

func (s *counterSeries) Desc() *prometheus.Desc { return s.desc }

func (s *counterSeries) Write(out *dto.Metric) error {
	out.Label, out.Counter = s.labels, &s.c
	return nil
}

type gaugeSeries struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	v      float64
	g      dto.Gauge
}

func (s *gaugeSeries) Desc() *prometheus.Desc { return s.desc }

func (s *gaugeSeries) Write(out *dto.Metric) error {
	out.Label, out.Gauge = s.labels, &s.g
	return nil
}
