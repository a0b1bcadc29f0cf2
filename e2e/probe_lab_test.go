//go:build lab

package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/lvsd/lvsd/lab/topo"
)

// ipvsProbe reads one TCP service's destination weights straight from a
// host's IPVS over netlink: milliseconds, where an ipvsadm exec in the VM
// costs 100 ms or more. It uses moby/ipvs, so it is also an independent
// reader of what lvsd wrote.
type ipvsProbe struct {
	t   *testing.T
	h   *ipvs.Handle
	svc *ipvs.Service
}

func newIPVSProbe(t *testing.T, host *topo.Host, vip string, port uint16) *ipvsProbe {
	t.Helper()
	ih, err := ipvs.New(host.NetnsPath())
	if err != nil {
		t.Fatalf("netlink IPVS handle in %s: %v", host.Name(), err)
	}
	t.Cleanup(ih.Close)
	svc := &ipvs.Service{AddressFamily: unix.AF_INET, Protocol: unix.IPPROTO_TCP, Address: net.ParseIP(vip).To4(), Port: port}
	return &ipvsProbe{t: t, h: ih, svc: svc}
}

// weight is addr's weight in the service, -1 when absent.
func (p *ipvsProbe) weight(addr string) int {
	p.t.Helper()
	dests, err := p.h.GetDestinations(p.svc)
	if err != nil {
		p.t.Fatalf("read IPVS destinations: %v", err)
	}
	for _, d := range dests {
		if d.Address.Equal(net.ParseIP(addr)) {
			return d.Weight
		}
	}
	return -1
}

// wait polls cond every 5 ms and returns how long it took to hold.
func (p *ipvsProbe) wait(timeout time.Duration, what string, cond func() bool) time.Duration {
	p.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			p.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}
