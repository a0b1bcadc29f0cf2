package vrrp

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/lvsd/lvsd/lab/topo"
)

// TestRemoveAddressAtAnyPrefixLength: releasing a VIP removes it from the
// interface whatever prefix length it was left with (a crash, then the
// config's prefix changed), IPv4 and IPv6, and leaves other addresses.
func TestRemoveAddressAtAnyPrefixLength(t *testing.T) {
	needRoot(t)
	h := topo.New(t).Host("vip", "198.18.0.5/24", "2001:db8::5/64")
	h.AddAddr("eth0", "198.18.0.100/24")
	h.AddAddr("eth0", "2001:db8::100/64")
	err := h.Do(func() error {
		return netlinkAddresser{}.remove("eth0", []netip.Prefix{netip.MustParsePrefix("198.18.0.100/32"), netip.MustParsePrefix("2001:db8::100/128")})
	})
	if err != nil {
		t.Fatal(err)
	}
	link, err := h.Netlink().LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.Netlink().AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var have []string
	for _, a := range addrs {
		have = append(have, a.IPNet.String())
	}
	for _, gone := range []string{"198.18.0.100/24", "2001:db8::100/64"} {
		if slices.Contains(have, gone) {
			t.Errorf("%s is still on the interface: %v", gone, have)
		}
	}
	for _, kept := range []string{"198.18.0.5/24", "2001:db8::5/64"} {
		if !slices.Contains(have, kept) {
			t.Errorf("%s was removed too: %v", kept, have)
		}
	}
}
