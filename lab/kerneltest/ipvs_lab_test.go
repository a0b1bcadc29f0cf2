//go:build lab

package kerneltest

import (
	"context"
	"encoding/binary"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/lvsd/lvsd/lab/topo"
)

// Service flags (IP_VS_SVC_F_*); moby/ipvs has no constants for them.
const (
	flagPersistent = 0x1
	flagHashed     = 0x2 // added by the kernel
)

// netmaskV4 encodes an IPv4 persistence granularity for moby/ipvs. The
// library puts Netmask into netlink in host byte order, but the kernel reads
// a __be32; so the value must hold the mask's bytes in memory order.
func netmaskV4(bits int) uint32 {
	return binary.NativeEndian.Uint32(net.CIDRMask(bits, 32))
}

// netmaskString decodes what the kernel reports back, the same way.
func netmaskString(v uint32) string {
	b := make(net.IP, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b.String()
}

func handle(t *testing.T, h *topo.Host) *ipvs.Handle {
	t.Helper()
	ih, err := ipvs.New(h.NetnsPath())
	if err != nil {
		t.Fatalf("ipvs handle in %s: %v", h.Name(), err)
	}
	t.Cleanup(ih.Close)
	return ih
}

func findService(t *testing.T, ih *ipvs.Handle, match func(*ipvs.Service) bool) *ipvs.Service {
	t.Helper()
	svcs, err := ih.GetServices()
	if err != nil {
		t.Fatalf("list services: %v", err)
	}
	for _, s := range svcs {
		if match(s) {
			return s
		}
	}
	t.Fatalf("service not found among %d", len(svcs))
	return nil
}

// ipvsadmHas reports whether `ipvsadm args...` output has a line whose
// whitespace-separated fields equal want's.
func ipvsadmLine(out, want string) bool {
	w := strings.Join(strings.Fields(want), " ")
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == w {
			return true
		}
	}
	return false
}

func TestPersistentPort0AndFWMServicesReadBack(t *testing.T) {
	requireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tp := topo.New(t)
	dir := tp.Host("dir", "198.18.0.1/24")
	ih := handle(t, dir)

	pcc := &ipvs.Service{
		AddressFamily: unix.AF_INET, Protocol: unix.IPPROTO_TCP,
		Address: net.ParseIP("198.18.1.100").To4(), Port: 0,
		SchedName: "rr", Flags: flagPersistent, Timeout: 500, Netmask: netmaskV4(24),
	}
	if err := ih.NewService(pcc); err != nil {
		t.Fatalf("add port-0 persistent service: %v", err)
	}
	for _, rs := range []string{"198.18.2.11", "198.18.2.12"} {
		d := &ipvs.Destination{Address: net.ParseIP(rs).To4(), Port: 0, Weight: 1,
			ConnectionFlags: ipvs.ConnectionFlagDirectRoute, AddressFamily: unix.AF_INET}
		if err := ih.NewDestination(pcc, d); err != nil {
			t.Fatalf("add DR destination %s: %v", rs, err)
		}
	}
	fwm := &ipvs.Service{
		AddressFamily: unix.AF_INET, FWMark: 8,
		SchedName: "rr", Flags: flagPersistent, Timeout: 360, Netmask: netmaskV4(32),
	}
	if err := ih.NewService(fwm); err != nil {
		t.Fatalf("add fwmark service: %v", err)
	}
	// The trap, shown: the mask as a plain host-order number.
	naive := &ipvs.Service{
		AddressFamily: unix.AF_INET, Protocol: unix.IPPROTO_TCP,
		Address: net.ParseIP("198.18.1.101").To4(), Port: 0,
		SchedName: "rr", Flags: flagPersistent, Timeout: 500, Netmask: 0xFFFFFF00,
	}
	if err := ih.NewService(naive); err != nil {
		t.Fatalf("add naive-mask service: %v", err)
	}

	// Read back over netlink.
	got := findService(t, ih, func(s *ipvs.Service) bool { return s.FWMark == 0 && s.Address.Equal(pcc.Address) })
	if got.Port != 0 || got.SchedName != "rr" || got.Timeout != 500 {
		t.Errorf("port-0 service read back port=%d sched=%q timeout=%d, want 0 rr 500", got.Port, got.SchedName, got.Timeout)
	}
	if got.Flags&^flagHashed != flagPersistent {
		t.Errorf("port-0 service flags %#x, want persistent (%#x, plus hashed)", got.Flags, flagPersistent)
	}
	if m := netmaskString(got.Netmask); m != "255.255.255.0" {
		t.Errorf("port-0 service netmask over netlink = %s, want 255.255.255.0", m)
	}
	gf := findService(t, ih, func(s *ipvs.Service) bool { return s.FWMark == 8 })
	if gf.Flags&^flagHashed != flagPersistent || gf.Timeout != 360 || gf.Protocol != 0 || gf.Port != 0 {
		t.Errorf("fwmark service read back flags=%#x timeout=%d proto=%d port=%d", gf.Flags, gf.Timeout, gf.Protocol, gf.Port)
	}
	if m := netmaskString(gf.Netmask); m != "255.255.255.255" {
		t.Errorf("fwmark service netmask = %s, want 255.255.255.255", m)
	}
	dests, err := ih.GetDestinations(got)
	if err != nil {
		t.Fatal(err)
	}
	if len(dests) != 2 {
		t.Errorf("port-0 service has %d destinations, want 2", len(dests))
	}
	for _, d := range dests {
		if d.ConnectionFlags&ipvs.ConnectionFlagFwdMask != ipvs.ConnectionFlagDirectRoute {
			t.Errorf("destination %s forwarding %#x, want DR", d.Address, d.ConnectionFlags)
		}
	}

	// Read back as the operator sees it.
	out, err := dir.Run(ctx, "ipvsadm", "-Ln")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ipvsadm -Ln:\n%s", out)
	for _, want := range []string{
		"TCP 198.18.1.100:0 rr persistent 500 mask 255.255.255.0",
		"-> 198.18.2.11:0 Route 1 0 0",
		"FWM 8 rr persistent 360",
		"TCP 198.18.1.101:0 rr persistent 500 mask 0.255.255.255", // the trap
	} {
		if !ipvsadmLine(out, want) {
			t.Errorf("ipvsadm -Ln lacks %q", want)
		}
	}
	pc, err := dir.Run(ctx, "ipvsadm", "-Ln", "--persistent-conn")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`TCP\s+198\.18\.1\.100:0\s+rr\s+persistent 500 mask 255\.255\.255\.0`).MatchString(pc) {
		t.Errorf("ipvsadm -Ln --persistent-conn lacks the /24 service:\n%s", pc)
	}
}

func TestIPVSIsPerNamespace(t *testing.T) {
	requireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tp := topo.New(t)
	a := tp.Host("a", "198.18.0.1/24")
	b := tp.Host("b", "198.18.0.2/24")
	ha, hb := handle(t, a), handle(t, b)
	svc := &ipvs.Service{
		AddressFamily: unix.AF_INET, Protocol: unix.IPPROTO_TCP,
		Address: net.ParseIP("198.18.1.100").To4(), Port: 80, SchedName: "wrr", Netmask: netmaskV4(32),
	}
	if err := ha.NewService(svc); err != nil {
		t.Fatalf("add service in a: %v", err)
	}
	sa, err := ha.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	sb, err := hb.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	if len(sa) != 1 || len(sb) != 0 {
		t.Errorf("services: %d in a, %d in b; want 1 and 0", len(sa), len(sb))
	}
	if hb.IsServicePresent(svc) {
		t.Errorf("b sees a's service")
	}
	outB, err := b.Run(ctx, "ipvsadm", "-Ln")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(outB, "198.18.1.100") {
		t.Errorf("ipvsadm in b shows a's service:\n%s", outB)
	}
	outA, err := a.Run(ctx, "ipvsadm", "-Ln")
	if err != nil {
		t.Fatal(err)
	}
	if !ipvsadmLine(outA, "TCP 198.18.1.100:80 wrr") {
		t.Errorf("ipvsadm in a lacks its service:\n%s", outA)
	}
}

// natLab is a client subnet, a director and two real servers in another
// subnet whose default route is the director (as NAT requires).
type natLab struct {
	clients  []*topo.Host
	dir      *topo.Host
	ih       *ipvs.Handle
	rs       []string
	realSrvs []*topo.Host
}

func newNATLab(t *testing.T, nclients int) *natLab {
	tp := topo.New(t)
	l := &natLab{}
	l.dir = tp.Host("dir", "198.18.0.1/24", "198.18.2.1/24")
	l.dir.Sysctl("net.ipv4.ip_forward", "1")
	// Replies leave through the interface they came in on: no redirects.
	l.dir.Sysctl("net.ipv4.conf.all.send_redirects", "0")
	l.dir.Sysctl("net.ipv4.conf.eth0.send_redirects", "0")
	l.dir.AddAddr("lo", "198.18.1.100/32")
	l.dir.AddAddr("lo", "198.18.1.101/32")
	for i := 0; i < nclients; i++ {
		c := tp.Host("client"+string(rune('1'+i)), "198.18.0."+string(rune('1'+i))+"0/24")
		c.AddRoute("198.18.1.0/24", "198.18.0.1")
		l.clients = append(l.clients, c)
	}
	for i, addr := range []string{"198.18.2.11", "198.18.2.12"} {
		rs := tp.Host("rs"+string(rune('1'+i)), addr+"/24")
		rs.AddRoute("default", "198.18.2.1")
		rs.ServeHTTP(":80")
		l.rs = append(l.rs, addr)
		l.realSrvs = append(l.realSrvs, rs)
	}
	l.ih = handle(t, l.dir)
	return l
}

func (l *natLab) service(t *testing.T, vip string, persistent bool) {
	t.Helper()
	svc := &ipvs.Service{
		AddressFamily: unix.AF_INET, Protocol: unix.IPPROTO_TCP,
		Address: net.ParseIP(vip).To4(), Port: 80, SchedName: "rr", Netmask: netmaskV4(32),
	}
	if persistent {
		svc.Flags, svc.Timeout = flagPersistent, 300
	}
	if err := l.ih.NewService(svc); err != nil {
		t.Fatalf("add service %s: %v", vip, err)
	}
	for _, rs := range l.rs {
		d := &ipvs.Destination{Address: net.ParseIP(rs).To4(), Port: 80, Weight: 1,
			ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: unix.AF_INET}
		if err := l.ih.NewDestination(svc, d); err != nil {
			t.Fatalf("add NAT destination %s to %s: %v", rs, vip, err)
		}
	}
}

func TestNATTrafficPersistentSticksAndPlainAlternates(t *testing.T) {
	requireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	l := newNATLab(t, 2)
	l.service(t, "198.18.1.100", true)
	l.service(t, "198.18.1.101", false)

	const n = 8
	seen := map[string]bool{}
	for _, c := range l.clients {
		var got []string
		for i := 0; i < n; i++ {
			who, err := c.HTTPGet(ctx, "http://198.18.1.100/")
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			got = append(got, who)
		}
		for _, w := range got {
			if w != got[0] {
				t.Errorf("%s through the persistent service reached %v, want one real server", c.Name(), got)
				break
			}
		}
		seen[got[0]] = true
		t.Logf("%s -> persistent VIP: %v", c.Name(), got)
	}
	if len(seen) != 2 {
		t.Errorf("two clients on rr+persistence reached %v, want one each of rs1 and rs2", seen)
	}

	var got []string
	for i := 0; i < n; i++ {
		who, err := l.clients[0].HTTPGet(ctx, "http://198.18.1.101/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got = append(got, who)
	}
	t.Logf("%s -> plain VIP: %v", l.clients[0].Name(), got)
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			t.Errorf("non-persistent rr service did not alternate: %v", got)
			break
		}
	}
	out, err := l.dir.Run(ctx, "ipvsadm", "-Lnc")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ipvsadm -Lnc (connections and persistence templates):\n%s", out)
}
