//go:build lab

package ipvsnl

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/ipvsnl/ipvsadmtest"
	"github.com/lvsd/lvsd/lab/topo"
	mobyipvs "github.com/moby/ipvs"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Lab tests run inside the qemu VM (go run ./cmd/lvslab test ./ipvsnl/...),
// each in fresh network namespaces made by lab/topo (lo up), and check what
// ipvsnl programmed against `ipvsadm -Ln` run in the same namespace.

func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("LVSD_LAB_VM") != "1" {
		t.Fatal("lab test outside the lab VM: run it with `go run ./cmd/lvslab test ./ipvsnl/...`")
	}
}

type labNS struct {
	t    *testing.T
	host *topo.Host
	c    *Client
}

// newNS makes a namespace (eth0 on a bridge, lo up) with a client in it.
func newNS(t *testing.T, addrs ...string) *labNS {
	t.Helper()
	requireVM(t)
	tp := topo.New(t)
	if len(addrs) == 0 {
		addrs = []string{"198.18.0.1/24", "2001:db8::1/64"}
	}
	h := tp.Host("dir", addrs...)
	return &labNS{t: t, host: h, c: openIn(t, h)}
}

func openIn(t *testing.T, h *topo.Host) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Open(ctx, Options{NetNSPath: h.NetnsPath(), Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatalf("Open in %s: %v", h.Name(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (n *labNS) apply(ops []Op) {
	n.t.Helper()
	if errs := n.c.Apply(ctxT(n.t), ops); errs != nil {
		n.t.Fatalf("Apply: %v", errors.Join(errs...))
	}
}

// ipvsadm runs ipvsadm in the namespace and parses its listing.
func (n *labNS) ipvsadm(args ...string) (map[string]ipvsadmtest.Service, string) {
	n.t.Helper()
	out, err := n.host.Run(ctxT(n.t), "ipvsadm", append([]string{"-L", "-n"}, args...)...)
	if err != nil {
		n.t.Fatalf("ipvsadm: %v", err)
	}
	svcs, err := ipvsadmtest.Parse(out)
	if err != nil {
		n.t.Fatalf("parsing ipvsadm output: %v\n%s", err, out)
	}
	m := map[string]ipvsadmtest.Service{}
	for _, s := range svcs {
		m[s.Key()] = s
	}
	return m, out
}

func v4(s string) netip.Addr { return netip.MustParseAddr(s) }

func persistent(s Service, timeout uint32) Service {
	s.Flags |= FlagPersistent
	s.Timeout = timeout
	return s
}

func svc4(addr string, port uint16) Service {
	return Service{Family: AFInet, Protocol: ProtoTCP, Address: v4(addr), Port: port, Scheduler: "rr", Netmask: 0xFFFFFFFF}
}

func dr(addr string, port uint16) Destination {
	return Destination{Address: v4(addr), Port: port, Forward: ForwardRoute, Weight: 1}
}

// TestLabSeedModels programs the seed's PCC, PPC and FWM tables and checks
// them in ipvsadm -Ln and in ipvsnl's own dumps.
func TestLabSeedModels(t *testing.T) {
	n := newNS(t)
	pcc := persistent(svc4("198.18.1.63", 0), 500)
	ssh := persistent(svc4("198.18.1.64", 22), 360)
	web := persistent(svc4("198.18.1.64", 80), 360)
	fwm := persistent(Service{Family: AFInet, FWMark: 8, Scheduler: "rr", Netmask: 0xFFFFFFFF}, 360)
	ops := []Op{
		{Cmd: CmdNewService, Service: pcc},
		{Cmd: CmdNewDest, Service: pcc, Dest: dr("198.18.1.65", 0)},
		{Cmd: CmdNewDest, Service: pcc, Dest: dr("198.18.1.66", 0)},
		{Cmd: CmdNewService, Service: ssh},
		{Cmd: CmdNewService, Service: web},
		{Cmd: CmdNewDest, Service: web, Dest: dr("198.18.1.65", 80)},
		{Cmd: CmdNewDest, Service: web, Dest: dr("198.18.1.66", 80)},
		{Cmd: CmdNewDest, Service: ssh, Dest: dr("198.18.1.65", 22)},
		{Cmd: CmdNewService, Service: fwm},
		{Cmd: CmdNewDest, Service: fwm, Dest: dr("198.18.1.65", 0)},
		{Cmd: CmdNewDest, Service: fwm, Dest: dr("198.18.1.66", 0)},
	}
	n.apply(ops)

	got, out := n.ipvsadm()
	route := func(addrs ...string) []ipvsadmtest.Dest {
		var ds []ipvsadmtest.Dest
		for _, a := range addrs {
			ds = append(ds, ipvsadmtest.Dest{Addr: a, Forward: "Route", Numbers: []uint64{1, 0, 0}})
		}
		return ds
	}
	want := map[string]ipvsadmtest.Service{
		"TCP 198.18.1.63:0":  {Proto: "TCP", Addr: "198.18.1.63:0", Scheduler: "rr", Persistent: true, Timeout: 500, Dests: route("198.18.1.65:0", "198.18.1.66:0")},
		"TCP 198.18.1.64:22": {Proto: "TCP", Addr: "198.18.1.64:22", Scheduler: "rr", Persistent: true, Timeout: 360, Dests: route("198.18.1.65:22")},
		"TCP 198.18.1.64:80": {Proto: "TCP", Addr: "198.18.1.64:80", Scheduler: "rr", Persistent: true, Timeout: 360, Dests: route("198.18.1.65:80", "198.18.1.66:80")},
		"FWM 8":              {Proto: "FWM", Addr: "8", Scheduler: "rr", Persistent: true, Timeout: 360, Dests: route("198.18.1.65:0", "198.18.1.66:0")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ipvsadm -Ln differs:\n got %+v\nwant %+v\n%s", got, want, out)
	}

	// The dumps give back exactly what was written (plus HASHED).
	svcs, err := n.c.Services(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	written := map[svcKey]Service{keyOf(pcc): pcc, keyOf(ssh): ssh, keyOf(web): web, keyOf(fwm): fwm}
	if len(svcs) != len(written) {
		t.Fatalf("dump has %d services, want %d", len(svcs), len(written))
	}
	for _, s := range svcs {
		w := written[keyOf(s)]
		w.Flags |= FlagHashed
		s.Stats = Stats{}
		if !reflect.DeepEqual(s, w) {
			t.Errorf("dumped service\n got %+v\nwant %+v", s, w)
		}
	}
	ds, err := n.c.Destinations(ctxT(t), web)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 {
		t.Fatalf("web has %d destinations, want 2", len(ds))
	}
	for _, d := range ds {
		w := dr(d.Address.String(), 80)
		w.Family = AFInet
		d.Stats = Stats{}
		if !reflect.DeepEqual(d, w) {
			t.Errorf("dumped destination\n got %+v\nwant %+v", d, w)
		}
	}
}

// TestLabGranularity: a /24 reads back as 255.255.255.0 in ipvsadm (the
// byte-order trap), IPv6 services take prefix lengths.
func TestLabGranularity(t *testing.T) {
	n := newNS(t)
	s24 := persistent(svc4("198.18.1.70", 0), 500)
	s24.Netmask = 0xFFFFFF00
	s0 := persistent(svc4("198.18.1.71", 0), 60)
	s0.Netmask = 0
	v6 := persistent(Service{Family: AFInet6, Protocol: ProtoUDP, Address: netip.MustParseAddr("2001:db8:1::100"), Port: 53, Scheduler: "sh", Flags: FlagSched1, Netmask: 64}, 120)
	v6full := Service{Family: AFInet6, Protocol: ProtoSCTP, Address: netip.MustParseAddr("2001:db8:1::101"), Port: 80, Scheduler: "wlc", Netmask: 128}
	fwm6 := persistent(Service{Family: AFInet6, FWMark: 9, Scheduler: "rr", Netmask: 48}, 360)
	n.apply([]Op{
		{Cmd: CmdNewService, Service: s24},
		{Cmd: CmdNewService, Service: s0},
		{Cmd: CmdNewService, Service: v6},
		{Cmd: CmdNewDest, Service: v6, Dest: Destination{Address: netip.MustParseAddr("2001:db8:2::1"), Port: 53, Forward: ForwardMasq, Weight: 3}},
		{Cmd: CmdNewService, Service: v6full},
		{Cmd: CmdNewService, Service: fwm6},
	})
	got, out := n.ipvsadm()
	check := func(key, mask string, timeout int) {
		t.Helper()
		s, ok := got[key]
		if !ok {
			t.Errorf("ipvsadm lacks %s:\n%s", key, out)
			return
		}
		if s.Mask != mask || s.Timeout != timeout {
			t.Errorf("%s: mask %q timeout %d, want %q %d\n%s", key, s.Mask, s.Timeout, mask, timeout, out)
		}
	}
	check("TCP 198.18.1.70:0", "255.255.255.0", 500)
	check("TCP 198.18.1.71:0", "0.0.0.0", 60)
	check("UDP [2001:db8:1::100]:53", "64", 120)
	check("FWM 9 IPv6", "48", 360)
	if s := got["SCTP [2001:db8:1::101]:80"]; s.Scheduler != "wlc" || s.Persistent {
		t.Errorf("SCTP service %+v", s)
	}
	if d := got["UDP [2001:db8:1::100]:53"].Dests; len(d) != 1 || d[0].Addr != "[2001:db8:2::1]:53" || d[0].Forward != "Masq" || d[0].Numbers[0] != 3 {
		t.Errorf("IPv6 destination %+v\n%s", d, out)
	}
	svcs, err := n.c.Services(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.Address == s24.Address {
			if bits, ok := s.Netmask.PrefixLen(AFInet); !ok || bits != 24 {
				t.Errorf("/24 dumped as netmask %#x", uint32(s.Netmask))
			}
		}
		if s.FWMark == 9 && (s.Family != AFInet6 || s.Netmask != 48) {
			t.Errorf("IPv6 FWM dumped as %+v", s)
		}
	}
}

// TestLabUpdateInPlace changes a service and a destination with SET and
// checks that nothing else moved.
func TestLabUpdateInPlace(t *testing.T) {
	n := newNS(t)
	s := persistent(svc4("198.18.1.80", 80), 300)
	n.apply([]Op{
		{Cmd: CmdNewService, Service: s},
		{Cmd: CmdNewDest, Service: s, Dest: dr("198.18.1.81", 80)},
		{Cmd: CmdNewDest, Service: s, Dest: dr("198.18.1.82", 80)},
	})
	s2 := s
	s2.Scheduler, s2.Timeout, s2.Flags = "wlc", 900, FlagPersistent|FlagOnePacket
	d2 := dr("198.18.1.82", 80)
	d2.Weight, d2.UpperThreshold, d2.LowerThreshold = 0, 50, 10
	n.apply([]Op{
		{Cmd: CmdSetService, Service: s2},
		{Cmd: CmdSetDest, Service: s2, Dest: d2},
	})
	got, out := n.ipvsadm()
	g := got["TCP 198.18.1.80:80"]
	if g.Scheduler != "wlc" || g.Timeout != 900 || !g.OnePacket || len(g.Dests) != 2 {
		t.Fatalf("after update: %+v\n%s", g, out)
	}
	for _, d := range g.Dests {
		wantW := uint64(1)
		if d.Addr == "198.18.1.82:80" {
			wantW = 0
		}
		if d.Numbers[0] != wantW {
			t.Errorf("%s weight %d, want %d", d.Addr, d.Numbers[0], wantW)
		}
	}
	ds, err := n.c.Destinations(ctxT(t), s)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.Address == d2.Address && (d.UpperThreshold != 50 || d.LowerThreshold != 10 || d.Weight != 0) {
			t.Errorf("thresholds/weight not updated: %+v", d)
		}
	}
	// Turning persistence off again clears the flag (the mask covers it).
	s3 := s2
	s3.Flags = 0
	n.apply([]Op{{Cmd: CmdSetService, Service: s3}})
	if g := mustService(t, n.c, s3); g.Flags&^FlagHashed != 0 {
		t.Errorf("flags after clearing: %#x", g.Flags)
	}
}

func mustService(t *testing.T, c *Client, key Service) Service {
	t.Helper()
	s, err := c.Service(ctxT(t), key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestLabBatchPerOpErrors sends one batch with bad ops among good ones.
func TestLabBatchPerOpErrors(t *testing.T) {
	n := newNS(t)
	s := svc4("198.18.1.90", 80)
	other := svc4("198.18.1.91", 80)
	badSched := svc4("198.18.1.92", 80)
	badSched.Scheduler = "nosuch"
	ops := []Op{
		{Cmd: CmdNewService, Service: s},                               // 0 ok
		{Cmd: CmdNewDest, Service: s, Dest: dr("198.18.1.93", 80)},     // 1 ok
		{Cmd: CmdNewDest, Service: s, Dest: dr("198.18.1.93", 80)},     // 2 EEXIST
		{Cmd: CmdNewDest, Service: other, Dest: dr("198.18.1.93", 80)}, // 3 ESRCH
		{Cmd: CmdNewService, Service: badSched},                        // 4 ENOENT (no such scheduler)
		{Cmd: CmdSetDest, Service: s, Dest: dr("198.18.1.94", 80)},     // 5 ENOENT
		{Cmd: CmdNewService, Service: s},                               // 6 EEXIST
		{Cmd: CmdNewDest, Service: s, Dest: dr("198.18.1.94", 80)},     // 7 ok
		{Cmd: CmdDelDest, Service: s, Dest: dr("198.18.1.95", 80)},     // 8 ENOENT
		{Cmd: CmdDelService, Service: other},                           // 9 ESRCH
		{Cmd: CmdNewService, Service: other},                           // 10 ok
		{Cmd: CmdNewDest, Service: other, Dest: dr("198.18.1.96", 80)}, // 11 ok
	}
	errs := n.c.Apply(ctxT(t), ops)
	want := map[int]error{2: unix.EEXIST, 3: unix.ESRCH, 4: unix.ENOENT, 5: unix.ENOENT, 6: unix.EEXIST, 8: unix.ENOENT, 9: unix.ESRCH}
	if len(errs) != len(ops) {
		t.Fatalf("errors %v", errs)
	}
	for i, err := range errs {
		if w := want[i]; w != nil {
			if !errors.Is(err, w) {
				t.Errorf("op %d: %v, want %v", i, err, w)
			}
			t.Logf("op %d: %v", i, err)
		} else if err != nil {
			t.Errorf("op %d: unexpected %v", i, err)
		}
	}
	got, out := n.ipvsadm()
	if len(got) != 2 || len(got["TCP 198.18.1.90:80"].Dests) != 2 || len(got["TCP 198.18.1.91:80"].Dests) != 1 {
		t.Errorf("table after the batch:\n%s", out)
	}
}

// TestLabFreshNamespace shows the fresh-namespace trap and its hint: IPv4
// destinations are refused until lo is up.
func TestLabFreshNamespace(t *testing.T) {
	requireVM(t)
	name := fmt.Sprintf("lvsdnl%d-fresh", os.Getpid())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("returning to the original namespace: %v", serr) // the locked thread dies with the test
	}
	runtime.UnlockOSThread()
	orig.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
	c, err := Open(ctxT(t), Options{NetNSPath: "/run/netns/" + name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	s := svc4("198.18.1.100", 80)
	errs := c.Apply(ctxT(t), []Op{{Cmd: CmdNewService, Service: s}, {Cmd: CmdNewDest, Service: s, Dest: dr("198.18.1.101", 80)}})
	if len(errs) != 2 || errs[0] != nil || !errors.Is(errs[1], unix.EINVAL) || !strings.Contains(errs[1].Error(), "bring lo up") {
		t.Fatalf("errors %v; want the destination refused with EINVAL and the lo hint", errs)
	}
	t.Logf("lo down: %v", errs[1])
	h, err := vnl.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	if errs := c.Apply(ctxT(t), []Op{{Cmd: CmdNewDest, Service: s, Dest: dr("198.18.1.101", 80)}}); errs != nil {
		t.Fatalf("with lo up: %v", errs)
	}
}

// TestLabStatsAndConnCounts drives DR traffic through a persistent service
// and checks the dumped counters against ipvsadm --stats --exact and
// --persistent-conn.
func TestLabStatsAndConnCounts(t *testing.T) {
	requireVM(t)
	tp := topo.New(t)
	client := tp.Host("client", "198.18.0.10/24")
	dir := tp.Host("dir", "198.18.0.1/24")
	rs := tp.Host("rs1", "198.18.0.21/24")
	dir.AddAddr("eth0", "198.18.0.100/32")
	rs.AddLoopbackVIP("198.18.0.100")
	rs.ServeHTTP(":80")
	c := openIn(t, dir)
	n := &labNS{t: t, host: dir, c: c}
	s := persistent(svc4("198.18.0.100", 80), 300)
	n.apply([]Op{{Cmd: CmdNewService, Service: s}, {Cmd: CmdNewDest, Service: s, Dest: dr("198.18.0.21", 80)}})

	const gets = 3
	for i := range gets {
		who, err := client.HTTPGet(ctxT(t), "http://198.18.0.100/")
		if err != nil || who != "rs1" {
			t.Fatalf("GET %d through the VIP: %q, %v", i, who, err)
		}
	}
	// Connection counts are live; counters follow the 2 s estimator.
	ds, err := c.Destinations(ctxT(t), s)
	if err != nil || len(ds) != 1 {
		t.Fatalf("destinations %v, %v", ds, err)
	}
	if d := ds[0]; d.ActiveConns+d.InactiveConns < 1 || d.PersistentConns != 1 {
		t.Errorf("connection counts active %d inactive %d persistent %d; want some connections and 1 template", d.ActiveConns, d.InactiveConns, d.PersistentConns)
	}
	var got Service
	deadline := time.Now().Add(15 * time.Second)
	for {
		svcs, err := c.Services(ctxT(t))
		if err != nil || len(svcs) != 1 {
			t.Fatalf("services %v, %v", svcs, err)
		}
		got = svcs[0]
		if got.Stats.Conns >= gets || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got.Stats.Conns < gets || got.Stats.InPkts == 0 || got.Stats.InBytes == 0 {
		t.Fatalf("service counters %+v after %d connections", got.Stats, gets)
	}
	if got.Stats.OutPkts != 0 {
		t.Errorf("DR service counted %d outgoing packets; replies bypass the director", got.Stats.OutPkts)
	}
	stats, out := n.ipvsadm("--stats", "--exact")
	st := stats["TCP 198.18.0.100:80"]
	if len(st.Numbers) != 5 || st.Numbers[0] != got.Stats.Conns || st.Numbers[1] != got.Stats.InPkts || st.Numbers[3] != got.Stats.InBytes {
		t.Errorf("ipvsadm --stats %v, dump %+v\n%s", st.Numbers, got.Stats, out)
	}
	pc, out := n.ipvsadm("--persistent-conn")
	if d := pc["TCP 198.18.0.100:80"].Dests; len(d) != 1 || d[0].Numbers[1] != 1 {
		t.Errorf("ipvsadm --persistent-conn: %+v\n%s", d, out)
	}

	// Zeroing resets the counters of the service.
	if err := c.Zero(ctxT(t), &s); err != nil {
		t.Fatal(err)
	}
	after, err := c.Service(ctxT(t), s)
	if err != nil {
		t.Fatal(err)
	}
	if after.Stats.Conns != 0 || after.Stats.InPkts != 0 {
		t.Errorf("counters after Zero: %+v", after.Stats)
	}
	if err := c.Zero(ctxT(t), nil); err != nil {
		t.Errorf("zero all: %v", err)
	}
}

// TestLabSyncDaemons starts master and backup together, lists them with
// ipvsnl and ipvsadm, and stops them one by one.
func TestLabSyncDaemons(t *testing.T) {
	n := newNS(t)
	ctx := ctxT(t)
	master := SyncDaemon{State: DaemonMaster, Interface: "eth0", SyncID: 7, MaxLen: 1400, Group: netip.MustParseAddr("239.18.0.81"), Port: 8850, TTL: 2}
	backup := SyncDaemon{State: DaemonBackup, Interface: "eth0", SyncID: 7}
	if err := n.c.StartDaemon(ctx, master); err != nil {
		t.Fatal(err)
	}
	if err := n.c.StartDaemon(ctx, backup); err != nil {
		t.Fatalf("backup beside master: %v", err)
	}
	err := n.c.StartDaemon(ctx, master)
	if !errors.Is(err, unix.EEXIST) {
		t.Errorf("second master: %v, want EEXIST", err)
	}
	t.Logf("second master: %v", err)
	if err := n.c.StartDaemon(ctx, SyncDaemon{State: DaemonBackup, Interface: "nosuch0", SyncID: 1}); err == nil {
		t.Error("a daemon on a missing interface started")
	} else {
		t.Logf("missing interface: %v", err)
	}

	ds, err := n.c.Daemons(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].State != DaemonMaster || ds[1].State != DaemonBackup {
		t.Fatalf("daemons %+v", ds)
	}
	if m := ds[0]; m.Interface != "eth0" || m.SyncID != 7 || m.MaxLen != 1400 || m.Group != master.Group || m.Port != 8850 || m.TTL != 2 {
		t.Errorf("master reads back as %+v", m)
	}
	if b := ds[1]; b.Interface != "eth0" || b.SyncID != 7 || b.Port != 8848 || b.Group != netip.MustParseAddr("224.0.0.81") {
		t.Errorf("backup reads back as %+v (want kernel defaults for group and port)", b)
	}
	// On the wire: the master sends to its group and port, the backup
	// listens on the default port 8848 (/proc/net/udp shows the IPv4
	// address as a native-endian word and the port in hex).
	udp, err := n.host.Run(ctx, "cat", "/proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	var sendsTo, listensOn bool
	for _, l := range strings.Split(udp, "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		sendsTo = sendsTo || f[2] == "510012EF:2292" // 239.18.0.81:8850
		listensOn = listensOn || strings.HasSuffix(f[1], ":2290")
	}
	if !sendsTo || !listensOn {
		t.Errorf("sync sockets: master to 239.18.0.81:8850 %v, backup on :8848 %v\n%s", sendsTo, listensOn, udp)
	}
	out, err := n.host.Run(ctx, "ipvsadm", "-L", "--daemon")
	if err != nil {
		t.Fatal(err)
	}
	pd, err := ipvsadmtest.ParseDaemons(out)
	if err != nil || len(pd) != 2 || pd[0].Fields["syncid"] != "7" || pd[1].Fields["mcast"] != "eth0" {
		t.Errorf("ipvsadm -L --daemon: %+v, %v\n%s", pd, err, out)
	}

	if err := n.c.StopDaemon(ctx, DaemonMaster); err != nil {
		t.Fatal(err)
	}
	if ds, _ := n.c.Daemons(ctx); len(ds) != 1 || ds[0].State != DaemonBackup {
		t.Errorf("after stopping master: %+v", ds)
	}
	if err := n.c.StopDaemon(ctx, DaemonBackup); err != nil {
		t.Fatal(err)
	}
	if ds, _ := n.c.Daemons(ctx); len(ds) != 0 {
		t.Errorf("after stopping both: %+v", ds)
	}
	if err := n.c.StopDaemon(ctx, DaemonBackup); !errors.Is(err, unix.ESRCH) {
		t.Errorf("stopping a stopped daemon: %v, want ESRCH", err)
	}
}

// TestLabKnobsPerNamespace sets the knobs in one namespace and checks that
// another namespace keeps its own values.
func TestLabKnobsPerNamespace(t *testing.T) {
	requireVM(t)
	tp := topo.New(t)
	a := tp.Host("a", "198.18.0.1/24")
	b := tp.Host("b", "198.18.0.2/24")
	ca, cb := openIn(t, a), openIn(t, b)
	for _, name := range []string{SysctlExpireNodestConn, SysctlExpireQuiescentTemplate} {
		if err := ca.SetSysctl(name, 1); err != nil {
			t.Fatal(err)
		}
		if err := cb.SetSysctl(name, 0); err != nil {
			t.Fatal(err)
		}
		if v, err := ca.Sysctl(name); err != nil || v != 1 {
			t.Errorf("%s in a: %d, %v", name, v, err)
		}
		out, err := a.Run(ctxT(t), "cat", "/proc/sys/net/ipv4/vs/"+name)
		if err != nil || strings.TrimSpace(out) != "1" {
			t.Errorf("%s in a as cat sees it: %q, %v", name, out, err)
		}
		out, err = b.Run(ctxT(t), "cat", "/proc/sys/net/ipv4/vs/"+name)
		if err != nil || strings.TrimSpace(out) != "0" {
			t.Errorf("%s in b as cat sees it: %q, %v", name, out, err)
		}
	}
	if err := ca.SetSysctl(SysctlConnReuseMode, 2); err != nil {
		t.Fatal(err)
	}
	if v, _ := ca.Sysctl(SysctlConnReuseMode); v != 2 {
		t.Errorf("conn_reuse_mode = %d, want 2", v)
	}
}

// TestLabOverrun shrinks the socket's receive buffer so the kernel drops
// replies of a large batch, and checks that every op still lands once:
// with an ack per request, and with only the last one acked but every
// request failing.
func TestLabOverrun(t *testing.T) {
	n := newNS(t)
	if err := n.c.conn.SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	n.c.batchSize, n.c.ackEach = 1000, true
	ops := tableOps(40, 9) // 400 ops, far more acks than 4 KiB holds
	if errs := n.c.Apply(ctxT(t), ops); errs != nil {
		t.Fatalf("Apply under overrun: %v", errors.Join(errs...))
	}
	if n.c.BatchSize() >= 1000 {
		t.Errorf("batch size still %d; the overrun went unnoticed", n.c.BatchSize())
	}
	got, _ := n.ipvsadm()
	dests := 0
	for _, s := range got {
		dests += len(s.Dests)
	}
	if len(got) != 40 || dests != 360 {
		t.Errorf("table has %d services, %d dests; want 40, 360", len(got), dests)
	}

	// The same adds again with weight 3, errors-only replies: every one
	// fails with EEXIST, most answers are dropped, the unanswered adds are
	// re-issued as sets.
	if err := n.c.conn.SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	n.c.batchSize, n.c.ackEach = 1000, false
	var again []Op
	for _, op := range ops {
		if op.Cmd == CmdNewDest {
			op.Dest.Weight = 3
			again = append(again, op)
		}
	}
	errs := n.c.Apply(ctxT(t), again)
	exist := 0
	for _, err := range errs {
		if errors.Is(err, unix.EEXIST) {
			exist++
		} else if err != nil {
			t.Errorf("unexpected %v", err)
		}
	}
	got, out := n.ipvsadm()
	weight3 := 0
	for _, s := range got {
		for _, d := range s.Dests {
			if d.Numbers[0] == 3 {
				weight3++
			}
		}
	}
	t.Logf("%d answered with EEXIST, %d re-issued as sets", exist, weight3)
	if exist == len(again) || exist+weight3 != len(again) {
		t.Errorf("%d EEXIST + %d set to weight 3, want %d in all with some re-issued\n%s", exist, weight3, len(again), out)
	}
}

// TestLabSyncReplicatesConnections: a master on dir-a and a backup on dir-b
// with the same syncid; a client's connection and persistence template made
// through dir-a appear in dir-b's connection table.
func TestLabSyncReplicatesConnections(t *testing.T) {
	requireVM(t)
	tp := topo.New(t)
	client := tp.Host("client", "198.18.0.10/24")
	a := tp.Host("dir-a", "198.18.0.1/24")
	b := tp.Host("dir-b", "198.18.0.2/24")
	rs := tp.Host("rs1", "198.18.0.21/24")
	a.AddAddr("eth0", "198.18.0.100/32")
	rs.AddLoopbackVIP("198.18.0.100")
	rs.ServeIdentify(":80")
	ctx := ctxT(t)
	s := persistent(svc4("198.18.0.100", 80), 300)
	for _, h := range []*topo.Host{a, b} {
		c := openIn(t, h)
		n := &labNS{t: t, host: h, c: c}
		n.apply([]Op{{Cmd: CmdNewService, Service: s}, {Cmd: CmdNewDest, Service: s, Dest: dr("198.18.0.21", 80)}})
		state := DaemonMaster
		if h == b {
			state = DaemonBackup
		}
		if err := c.StartDaemon(ctx, SyncDaemon{State: state, Interface: "eth0", SyncID: 5}); err != nil {
			t.Fatal(err)
		}
	}
	// A long-lived connection: established entries are synced as they pass
	// the packet threshold, with their template.
	conn, err := client.Dial(ctx, "tcp", "198.18.0.100:80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 64)
	for i := range 5 {
		if _, err := conn.Write([]byte("ping\n")); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Read(buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	var out string
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err = b.Run(ctx, "ipvsadm", "-L", "-n", "-c")
		if err != nil {
			t.Fatal(err)
		}
		// The template: client address with port 0 to the VIP.
		if strings.Contains(out, "198.18.0.10:0") && strings.Contains(out, "198.18.0.21:80") || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(out, "198.18.0.10:0") || !strings.Contains(out, "198.18.0.21:80") {
		ao, _ := a.Run(ctx, "ipvsadm", "-L", "-n", "-c")
		t.Fatalf("backup has no synced template for the client.\nbackup:\n%s\nmaster:\n%s", out, ao)
	}
	t.Logf("backup's connection table:\n%s", out)
}

// TestLabMobyReadsIpvsnlTable: moby/ipvs, the library this package replaces
// for writes, reads what ipvsnl wrote; only the IPv4 netmask comes back in
// its byte order (host order of the network-order bytes), the trap ipvsnl
// avoids.
func TestLabMobyReadsIpvsnlTable(t *testing.T) {
	n := newNS(t)
	s := persistent(svc4("198.18.1.110", 0), 500)
	s.Netmask = 0xFFFFFF00
	n.apply([]Op{{Cmd: CmdNewService, Service: s}, {Cmd: CmdNewDest, Service: s, Dest: dr("198.18.1.111", 0)}})
	h, err := mobyipvs.New(n.host.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	svcs, err := h.GetServices()
	if err != nil || len(svcs) != 1 {
		t.Fatalf("moby GetServices: %v, %v", svcs, err)
	}
	m := svcs[0]
	if m.SchedName != "rr" || m.Timeout != 500 || m.Flags != uint32(FlagPersistent|FlagHashed) || !m.Address.Equal(s.Address.AsSlice()) || m.Port != 0 {
		t.Errorf("moby sees %+v", m)
	}
	var mask [4]byte
	binary.NativeEndian.PutUint32(mask[:], m.Netmask)
	if netip.AddrFrom4(mask) != v4("255.255.255.0") {
		t.Errorf("moby's netmask %#x is not the mask's bytes in host order", m.Netmask)
	}
	ds, err := h.GetDestinations(m)
	if err != nil || len(ds) != 1 || ds[0].ConnectionFlags != mobyipvs.ConnectionFlagDirectRoute || ds[0].Weight != 1 {
		t.Errorf("moby GetDestinations: %+v, %v", ds, err)
	}
}
