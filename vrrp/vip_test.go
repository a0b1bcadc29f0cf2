package vrrp

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/lvsd/lvsd/lab/topo"
)

// TestRemoveLeavesOtherPrefixLengths: releasing a VIP removes it at its
// configured prefix length, and only reports the same IP at another length
// (a VIP left behind, or the host's own address, which must stay), IPv4
// and IPv6; other addresses are untouched.
func TestRemoveLeavesOtherPrefixLengths(t *testing.T) {
	needRoot(t)
	h := topo.New(t).Host("vip", "198.18.0.5/24", "2001:db8::5/64")
	h.AddAddr("eth0", "198.18.0.100/32")
	h.AddAddr("eth0", "198.18.0.7/24") // a secondary: deleting the primary .5/24 would drop it too
	vips := []netip.Prefix{netip.MustParsePrefix("198.18.0.100/32"), netip.MustParsePrefix("198.18.0.5/32"), netip.MustParsePrefix("2001:db8::5/128")}
	err := h.Do(func() error { return netlinkAddresser{}.remove("eth0", vips) })
	for _, want := range []string{"198.18.0.5 is on eth0 as 198.18.0.5/24, not the configured /32: left in place", "2001:db8::5 is on eth0 as 2001:db8::5/64"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("remove: %v, want it to report %q", err, want)
		}
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
	if slices.Contains(have, "198.18.0.100/32") {
		t.Errorf("the VIP at its configured length is still there: %v", have)
	}
	for _, kept := range []string{"198.18.0.5/24", "198.18.0.7/24", "2001:db8::5/64"} {
		if !slices.Contains(have, kept) {
			t.Errorf("%s was removed: %v", kept, have)
		}
	}
}
