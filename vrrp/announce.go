package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// announcer sends one round of announcements for a group's addresses:
// a gratuitous ARP per IPv4 address, an unsolicited neighbour advertisement
// per IPv6 address.
type announcer interface {
	announce(ifname string, addrs []netip.Prefix) error
}

type garpAnnouncer struct{}

func (garpAnnouncer) announce(ifname string, addrs []netip.Prefix) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("announce: interface %q: %w", ifname, err)
	}
	var v4, v6 []netip.Addr
	for _, p := range addrs {
		if p.Addr().Is4() {
			v4 = append(v4, p.Addr())
		} else {
			v6 = append(v6, p.Addr())
		}
	}
	var errs []error
	if len(v4) > 0 {
		errs = append(errs, sendGARP(ifi, v4))
	}
	for _, ip := range v6 {
		errs = append(errs, sendNA(ifi, ip))
	}
	return errors.Join(errs...)
}

// sendGARP broadcasts an ARP request whose sender and target are the VIP,
// which every Linux host uses to refresh an existing neighbour entry.
func sendGARP(ifi *net.Interface, ips []netip.Addr) error {
	c, err := arp.Dial(ifi)
	if err != nil {
		return fmt.Errorf("gratuitous ARP on %s: %w", ifi.Name, err)
	}
	defer c.Close()
	var errs []error
	for _, ip := range ips {
		p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, ip, ethernet.Broadcast, ip)
		if err == nil {
			err = c.WriteTo(p, ethernet.Broadcast)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("gratuitous ARP for %s on %s: %w", ip, ifi.Name, err))
		}
	}
	return errors.Join(errs...)
}

// sendNA sends an unsolicited neighbour advertisement with the override flag
// to all nodes, from the VIP itself (added without DAD, so usable at once).
func sendNA(ifi *net.Interface, ip netip.Addr) error {
	c, _, err := ndp.Listen(ifi, ndp.Addr(ip.String()))
	if err != nil {
		return fmt.Errorf("neighbour advertisement for %s on %s: %w", ip, ifi.Name, err)
	}
	defer c.Close()
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: ip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: ifi.HardwareAddr}},
	}
	if err := c.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes()); err != nil {
		return fmt.Errorf("neighbour advertisement for %s on %s: %w", ip, ifi.Name, err)
	}
	return nil
}

// confirmDelay is when one more round follows every burst. Linux ignores an
// ARP update for an entry changed less than locktime (1 s) ago, so a burst
// that races another node's announcements (a healed partition) can be
// ignored; the late round lands after that window.
const confirmDelay = 1100 * time.Millisecond

// announceLoop runs while this node owns a group: a burst at once, another
// burst on every kick (e.g. after a healed partition), one more round
// confirmDelay after each burst, and one round every refresh period, until
// ctx ends.
func announceLoop(ctx context.Context, a announcer, g *GroupSpec, kick <-chan struct{}, lg *slog.Logger) {
	round := func() {
		if err := a.announce(g.Interface, g.Addresses); err != nil && ctx.Err() == nil {
			lg.Warn("announcing addresses failed", "group", g.Name, "err", err)
		}
	}
	confirm := time.NewTimer(confirmDelay)
	defer confirm.Stop()
	burst := func() {
		for i := 0; i < g.GARPCount; i++ {
			if i > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(g.GARPInterval):
				}
			}
			round()
		}
		confirm.Reset(confirmDelay)
	}
	burst()
	var refresh <-chan time.Time
	if g.GARPRefresh > 0 {
		t := time.NewTicker(g.GARPRefresh)
		defer t.Stop()
		refresh = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			burst()
		case <-confirm.C:
			round()
		case <-refresh:
			round()
		}
	}
}
