package topo

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host is a network namespace attached to the topology's switch.
type Host struct {
	topo *Topo
	name string
	ns   netns.NsHandle
	nl   *netlink.Handle

	mu    sync.Mutex
	ports map[string]string // interface in the host -> its bridge port
}

// Name is the host's short name, as given to Topo.Host.
func (h *Host) Name() string { return h.name }

// NetnsName is the namespace's name under /run/netns.
func (h *Host) NetnsName() string { return h.topo.nsName(h.name) }

// NetnsPath is /run/netns/NAME, usable with nsenter --net= and ipvs.New.
func (h *Host) NetnsPath() string { return filepath.Join(netnsDir, h.NetnsName()) }

// Netlink is a netlink handle that operates inside the host's namespace.
func (h *Host) Netlink() *netlink.Handle { return h.nl }

// Do runs fn with the calling OS thread inside the host's namespace.
// Sockets fn opens stay in that namespace. Goroutines fn starts do not.
func (h *Host) Do(fn func() error) error {
	if err := withNS(h.ns, fn); err != nil {
		return fmt.Errorf("in %s: %w", h.name, err)
	}
	return nil
}

func (h *Host) fatal(format string, args ...any) {
	h.topo.t.Helper()
	h.topo.t.Fatalf("topo: host %s: %s", h.name, fmt.Sprintf(format, args...))
}

// Sysctl sets a sysctl in the host's namespace, e.g.
// Sysctl("net.ipv4.ip_forward", "1").
func (h *Host) Sysctl(key, value string) {
	h.topo.t.Helper()
	if err := h.Do(func() error { return writeSysctl(key, value) }); err != nil {
		h.fatal("%v", err)
	}
}

// AddAddr adds a CIDR address (in the test networks) to interface dev.
func (h *Host) AddAddr(dev, cidr string) {
	h.topo.t.Helper()
	ps, err := parseTestPrefixes([]string{cidr})
	if err != nil {
		h.fatal("add address to %s: %v", dev, err)
	}
	link, err := h.nl.LinkByName(dev)
	if err != nil {
		h.fatal("add address %s: find %s: %v", cidr, dev, err)
	}
	if err := h.addAddr(link, ps[0]); err != nil {
		h.fatal("%v", err)
	}
}

// DelAddr removes a CIDR address from interface dev.
func (h *Host) DelAddr(dev, cidr string) {
	h.topo.t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		h.fatal("delete address %q from %s: %v", cidr, dev, err)
	}
	link, err := h.nl.LinkByName(dev)
	if err != nil {
		h.fatal("delete address %s: find %s: %v", cidr, dev, err)
	}
	if err := h.nl.AddrDel(link, a); err != nil {
		h.fatal("delete address %s from %s: %v", cidr, dev, err)
	}
}

func (h *Host) addAddr(link netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{
		IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
	}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.nl.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, link.Attrs().Name, err)
	}
	return nil
}

// AddInterface joins the host to the switch once more, through a new
// interface ifname holding addrs.
func (h *Host) AddInterface(ifname string, addrs ...string) {
	h.topo.t.Helper()
	if len(ifname) == 0 || len(ifname) > 15 {
		h.fatal("interface name %q: want 1-15 characters", ifname)
	}
	ps, err := parseTestPrefixes(addrs)
	if err != nil {
		h.fatal("interface %s: %v", ifname, err)
	}
	if err := h.attach(ifname, ps); err != nil {
		h.fatal("%v", err)
	}
}

// AddLoopbackVIP puts a VIP (given as an address, /32 or /128 is added) on
// lo and sets the ARP sysctls a direct-routing real server needs so it never
// answers ARP for the VIP: arp_ignore=1 and arp_announce=2 on all, lo and
// every interface the host has on the switch.
func (h *Host) AddLoopbackVIP(vip string) {
	h.topo.t.Helper()
	a, err := netip.ParseAddr(vip)
	if err != nil {
		h.fatal("loopback VIP %q: want an address such as 198.18.1.100: %v", vip, err)
	}
	h.AddAddr("lo", netip.PrefixFrom(a, a.BitLen()).String())
	if a.Is6() {
		return // no ARP; IPv6 has no equivalent knobs to set here
	}
	devs := []string{"all", "lo"}
	h.mu.Lock()
	for ifn := range h.ports {
		devs = append(devs, ifn)
	}
	h.mu.Unlock()
	for _, d := range devs {
		h.Sysctl("net/ipv4/conf/"+d+"/arp_ignore", "1")
		h.Sysctl("net/ipv4/conf/"+d+"/arp_announce", "2")
	}
}

// AddRoute adds a route: dst is a CIDR or "default", via a gateway address.
func (h *Host) AddRoute(dst, via string) {
	h.topo.t.Helper()
	gw, err := netip.ParseAddr(via)
	if err != nil {
		h.fatal("route %s via %q: bad gateway: %v", dst, via, err)
	}
	r := &netlink.Route{Gw: gw.AsSlice()}
	if dst != "default" {
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			h.fatal("route %q: want CIDR or \"default\": %v", dst, err)
		}
		r.Dst = &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	} else if gw.Is6() {
		r.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	if err := h.nl.RouteAdd(r); err != nil {
		h.fatal("add route %s via %s: %v", dst, via, err)
	}
}

// port returns the bridge port of the host's interface ifname.
func (h *Host) port(ifname string) (netlink.Link, error) {
	h.mu.Lock()
	p, ok := h.ports[ifname]
	h.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no interface %s on the switch", ifname)
	}
	return h.topo.swNL.LinkByName(p)
}

// LinkDown takes the host's eth0 bridge port down: to the rest of the
// topology the host is dead (its eth0 loses carrier too).
func (h *Host) LinkDown() { h.topo.t.Helper(); h.setPort("eth0", false) }

// LinkUp brings the host's eth0 bridge port back up and returns once both
// ends are operational.
func (h *Host) LinkUp() { h.topo.t.Helper(); h.setPort("eth0", true) }

// SetPort brings the bridge port of interface ifname up or down.
func (h *Host) SetPort(ifname string, up bool) { h.topo.t.Helper(); h.setPort(ifname, up) }

func (h *Host) setPort(ifname string, up bool) {
	h.topo.t.Helper()
	l, err := h.port(ifname)
	if err == nil {
		if up {
			err = h.topo.swNL.LinkSetUp(l)
			if err == nil {
				err = waitOperUp(h.topo.swNL, l.Attrs().Name)
			}
			if err == nil {
				err = waitOperUp(h.nl, ifname)
			}
		} else {
			err = h.topo.swNL.LinkSetDown(l)
		}
	}
	if err != nil {
		h.fatal("set %s port up=%v: %v", ifname, up, err)
	}
}

// MAC returns the hardware address of the host's interface ifname ("eth0"
// if empty).
func (h *Host) MAC(ifname string) net.HardwareAddr {
	h.topo.t.Helper()
	if ifname == "" {
		ifname = "eth0"
	}
	l, err := h.nl.LinkByName(ifname)
	if err != nil {
		h.fatal("MAC of %s: %v", ifname, err)
	}
	return l.Attrs().HardwareAddr
}

// Neighbor returns the MAC this host's neighbour table holds for addr (for
// example which director a client resolved a VIP to), and false when it
// has no usable entry.
func (h *Host) Neighbor(addr string) (net.HardwareAddr, bool) {
	h.topo.t.Helper()
	a, err := netip.ParseAddr(addr)
	if err != nil {
		h.fatal("neighbour %q: bad address: %v", addr, err)
	}
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	neighs, err := h.nl.NeighList(0, fam)
	if err != nil {
		h.fatal("list neighbours: %v", err)
	}
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.Unmap() != a.Unmap() {
			continue
		}
		if n.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) != 0 || len(n.HardwareAddr) == 0 {
			return nil, false
		}
		return n.HardwareAddr, true
	}
	return nil, false
}

// FlushNeighbors empties the host's neighbour table, so the next packet
// resolves addresses afresh.
func (h *Host) FlushNeighbors() {
	h.topo.t.Helper()
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neighs, err := h.nl.NeighList(0, fam)
		if err != nil {
			h.fatal("list neighbours: %v", err)
		}
		for i := range neighs {
			if neighs[i].State&netlink.NUD_PERMANENT != 0 {
				continue
			}
			h.nl.NeighDel(&neighs[i]) // gone already is fine
		}
	}
}
