package vrrp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// addresser adds and removes a group's addresses; netlinkAddresser is the
// kernel one, tests use fakes.
type addresser interface {
	add(ifname string, addrs []netip.Prefix) error
	remove(ifname string, addrs []netip.Prefix) error
}

// netlinkAddresser manages addresses in the current network namespace.
type netlinkAddresser struct{}

func toAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		// Usable at once: no duplicate address detection delay.
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// add adds every address, ignoring those already present (idempotent).
func (netlinkAddresser) add(ifname string, addrs []netip.Prefix) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("looking up interface %q: %w", ifname, err)
	}
	var errs []error
	for _, p := range addrs {
		if err := netlink.AddrAdd(link, toAddr(p)); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("adding %s to %s: %w", p, ifname, err))
		}
	}
	return errors.Join(errs...)
}

// remove deletes every address that is present at its configured prefix
// length. The same IP at another length is left in place and reported: it
// may be a VIP left behind (a crash, then the prefix changed in the
// config), which would answer for the VIP on a backup, but it may as well
// be the host's own address, which lvsd must never delete.
func (netlinkAddresser) remove(ifname string, addrs []netip.Prefix) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("looking up interface %q: %w", ifname, err)
	}
	var errs []error
	for _, p := range addrs {
		err := netlink.AddrDel(link, toAddr(p))
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing %s from %s: %w", p, ifname, err))
		}
	}
	present, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("listing addresses of %s: %w", ifname, err))...)
	}
	for _, p := range addrs {
		for _, a := range present {
			ip, ok := netip.AddrFromSlice(a.IP)
			if ones, _ := a.Mask.Size(); ok && ip.Unmap() == p.Addr().Unmap() && ones != p.Bits() {
				errs = append(errs, fmt.Errorf("%s is on %s as %s, not the configured /%d: left in place (remove it by hand if it is a VIP left behind)",
					p.Addr(), ifname, a.IPNet, p.Bits()))
			}
		}
	}
	return errors.Join(errs...)
}
