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

// BackendStats are one destination's counters.
type BackendStats struct {
	Backend       string
	Counters      Counters
	ActiveConns   int
	InactiveConns int
}

// ServiceStats are one lvsd-owned virtual service's counters.
type ServiceStats struct {
	Service  string // lvsd's service name
	Counters Counters
	Backends []BackendStats
}

// StatsSource reads the kernel's counters for the services lvsd owns.
type StatsSource interface {
	IPVSStats(ctx context.Context) ([]ServiceStats, error)
}

var (
	svcLabels  = []string{"service"}
	destLabels = []string{"service", "backend"}

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
	descScrapeErr   = prometheus.NewDesc("lvsd_ipvs_scrape_error", "1 when reading IPVS counters failed on this scrape.", nil, nil)
)

type ipvsCollector struct {
	src StatsSource
	log *slog.Logger
}

func (c *ipvsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSvcConns, descSvcPktsIn, descSvcPktsOut, descSvcBytesIn, descSvcBytesOut, descDstConns, descDstPktsIn, descDstPktsOut, descDstBytesIn, descDstBytesOut, descDstActive, descDstInactive, descScrapeErr} {
		ch <- d
	}
}

func (c *ipvsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stats, err := c.src.IPVSStats(ctx)
	if err != nil {
		c.log.Warn("read IPVS counters for metrics", "err", err)
		ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.GaugeValue, 0)
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
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
			ch <- prometheus.MustNewConstMetric(descDstActive, prometheus.GaugeValue, float64(b.ActiveConns), s.Service, b.Backend)
			ch <- prometheus.MustNewConstMetric(descDstInactive, prometheus.GaugeValue, float64(b.InactiveConns), s.Service, b.Backend)
		}
	}
}
