package daemon

import (
	"net/netip"
	"testing"

	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/ipvsconn"
)

// TestServiceNamer names connection-table entries: port and port-0
// services, fwmark templates per family, and a fwmark service's
// connections through the traffic its own mark rule marks.
func TestServiceNamer(t *testing.T) {
	v4 := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	services := []*config.Service{
		{Name: "web", Family: config.IPv4, Address: v4("198.18.1.63"), Port: 80},
		{Name: "pcc", Family: config.IPv4, Address: v4("198.18.1.64"), Port: 0},
		{Name: "fwm4", Family: config.IPv4, FWMark: 8, Mark: &config.Mark{Protocol: config.TCP, Ports: []uint16{80, 443},
			Destination: netip.MustParsePrefix("198.18.1.65/32")}},
		{Name: "fwm6", Family: config.IPv6, FWMark: 8},
	}
	name := serviceNamer(services)
	ap := netip.MustParseAddrPort
	for _, c := range []struct {
		conn ipvsconn.Conn
		want string
	}{
		{ipvsconn.Conn{Protocol: "TCP", Virtual: ap("198.18.1.63:80")}, "web"},
		{ipvsconn.Conn{Protocol: "TCP", Virtual: ap("198.18.1.64:22")}, "pcc"},
		{ipvsconn.Conn{Protocol: "IP", Virtual: ap("0.0.0.8:0")}, "fwm4"},
		{ipvsconn.Conn{Protocol: "IP", Virtual: ap("[0:8::]:0")}, "fwm6"},
		{ipvsconn.Conn{Protocol: "TCP", Virtual: ap("198.18.1.65:443")}, "fwm4"},
		{ipvsconn.Conn{Protocol: "TCP", Virtual: ap("198.18.1.65:22")}, ""},  // port not marked
		{ipvsconn.Conn{Protocol: "UDP", Virtual: ap("198.18.1.65:443")}, ""}, // protocol not marked
		{ipvsconn.Conn{Protocol: "TCP", Virtual: ap("198.18.9.9:80")}, ""},
	} {
		if got := name(c.conn); got != c.want {
			t.Errorf("%s %s: named %q, want %q", c.conn.Protocol, c.conn.Virtual, got, c.want)
		}
	}
}
