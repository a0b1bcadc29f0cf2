//go:build lab

package ipvsdp

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/ipvsnl/ipvsadmtest"
	"github.com/lvsd/lvsd/lab/topo"
	"golang.org/x/sys/unix"
)

// Lab tests run inside the qemu VM (go run ./cmd/lvslab test
// ./director/ipvsdp/...), each in fresh namespaces made by lab/topo, with
// `ipvsadm -Ln` in the same namespace as the independent witness.

func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("LVSD_LAB_VM") != "1" {
		t.Fatal("lab test outside the lab VM: run it with `go run ./cmd/lvslab test ./director/ipvsdp/...`")
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func openIn(t *testing.T, h *topo.Host) *Dataplane {
	t.Helper()
	dp, err := Open(ctxT(t), WithNetNS(h.NetnsPath()), WithLogger(slog.New(slog.NewTextHandler(tWriter{t}, nil))))
	if err != nil {
		t.Fatalf("Open in %s: %v", h.Name(), err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

func newDir(t *testing.T) (*topo.Host, *Dataplane) {
	t.Helper()
	requireVM(t)
	h := topo.New(t).Host("dir", "198.18.0.1/24", "2001:db8::1/64")
	return h, openIn(t, h)
}

func ipvsadm(t *testing.T, h *topo.Host, args ...string) (map[string]ipvsadmtest.Service, string) {
	t.Helper()
	out, err := h.Run(ctxT(t), "ipvsadm", append([]string{"-L", "-n"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	svcs, err := ipvsadmtest.Parse(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	m := map[string]ipvsadmtest.Service{}
	for _, s := range svcs {
		m[s.Key()] = s
	}
	return m, out
}

func svc(addr string, port uint16, persist time.Duration) director.Service {
	s := director.Service{
		Key:       director.ServiceKey{Family: director.IPv4, Protocol: director.TCP, Address: netip.MustParseAddr(addr), Port: port},
		Scheduler: "rr", PersistenceBits: 32,
	}
	if persist > 0 {
		s.Flags, s.Timeout = director.FlagPersistent, persist
	}
	return s
}

func drDest(addr string, port uint16) director.Destination {
	return director.Destination{Key: director.DestKey{Address: netip.MustParseAddr(addr), Port: port}, Weight: 1, Forward: director.ForwardDR}
}

// seed returns the seed's PCC, PPC and FWM services (addresses mapped into
// 198.18.0.0/15) with their destinations.
func seed() []director.DesiredService {
	fwm := director.Service{Key: director.ServiceKey{Family: director.IPv4, FWMark: 8}, Scheduler: "rr",
		Flags: director.FlagPersistent, Timeout: 360 * time.Second, PersistenceBits: 32}
	return []director.DesiredService{
		{Service: svc("198.18.1.63", 0, 500*time.Second), Destinations: []director.Destination{drDest("198.18.1.65", 0), drDest("198.18.1.66", 0)}},
		{Service: svc("198.18.1.64", 22, 360*time.Second), Destinations: []director.Destination{drDest("198.18.1.65", 22)}},
		{Service: svc("198.18.1.64", 80, 360*time.Second), Destinations: []director.Destination{drDest("198.18.1.65", 80), drDest("198.18.1.66", 80)}},
		{Service: fwm, Destinations: []director.Destination{drDest("198.18.1.65", 0), drDest("198.18.1.66", 0)}},
	}
}

func addOps(ds []director.DesiredService) []director.Op {
	var ops []director.Op
	for _, d := range ds {
		ops = append(ops, director.Op{Kind: director.OpAddService, Service: d.Service})
		for _, x := range d.Destinations {
			ops = append(ops, director.Op{Kind: director.OpAddDest, Service: d.Service, Dest: x})
		}
	}
	return ops
}

// TestLabSeedThroughDataplane programs the seed's tables through Apply and
// reads them back through the Dataplane and ipvsadm -Ln.
func TestLabSeedThroughDataplane(t *testing.T) {
	h, dp := newDir(t)
	want := seed()
	if errs := dp.Apply(ctxT(t), addOps(want)); errs != nil {
		t.Fatalf("Apply: %v", errors.Join(errs...))
	}
	got, err := dp.Services(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d services, want %d", len(got), len(want))
	}
	for _, w := range want {
		i := slices.IndexFunc(got, func(s director.Service) bool { return s.Key == w.Service.Key })
		if i < 0 || !director.SameService(got[i], w.Service) || !reflect.DeepEqual(got[i], w.Service) {
			t.Errorf("service %s reads back as %+v, want %+v", w.Service.Key, got, w.Service)
			continue
		}
		ds, err := dp.Destinations(ctxT(t), w.Service.Key)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(ds, func(a, b director.Destination) int { return a.Key.Compare(b.Key) })
		if !reflect.DeepEqual(ds, w.Destinations) {
			t.Errorf("destinations of %s: %+v, want %+v", w.Service.Key, ds, w.Destinations)
		}
	}
	tab, out := ipvsadm(t, h)
	for key, timeout := range map[string]int{"TCP 198.18.1.63:0": 500, "TCP 198.18.1.64:22": 360, "TCP 198.18.1.64:80": 360, "FWM 8": 360} {
		s, ok := tab[key]
		if !ok || s.Scheduler != "rr" || !s.Persistent || s.Timeout != timeout || s.Mask != "" {
			t.Errorf("ipvsadm %s: %+v\n%s", key, s, out)
		}
		for _, d := range s.Dests {
			if d.Forward != "Route" || d.Numbers[0] != 1 {
				t.Errorf("ipvsadm %s dest %+v", key, d)
			}
		}
	}
}

// TestLabTunnelTypes: GUE and GRE tunnel destinations go to the kernel
// with their port and checksum flags and read back the same, and a weight
// change (a set-dest) keeps the encapsulation.
func TestLabTunnelTypes(t *testing.T) {
	_, dp := newDir(t)
	svc := director.Service{Key: director.ServiceKey{Family: director.IPv4, Protocol: director.TCP, Address: netip.MustParseAddr("198.18.1.70"), Port: 80},
		Scheduler: "rr", PersistenceBits: 32}
	dest := func(a string, typ director.TunnelType, port, flags uint16) director.Destination {
		return director.Destination{Key: director.DestKey{Address: netip.MustParseAddr(a), Port: 80}, Weight: 1, Forward: director.ForwardTunnel,
			TunnelType: typ, TunnelPort: port, TunnelFlags: flags}
	}
	want := []director.Destination{
		dest("198.18.1.65", director.TunnelIPIP, 0, 0),
		dest("198.18.1.66", director.TunnelGUE, 6080, director.TunnelCsum),
		dest("198.18.1.67", director.TunnelGRE, 0, director.TunnelCsum),
	}
	if errs := dp.Apply(ctxT(t), addOps([]director.DesiredService{{Service: svc, Destinations: want}})); errs != nil {
		t.Fatalf("Apply: %v", errors.Join(errs...))
	}
	read := func() []director.Destination {
		t.Helper()
		ds, err := dp.Destinations(ctxT(t), svc.Key)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(ds, func(a, b director.Destination) int { return a.Key.Compare(b.Key) })
		return ds
	}
	if got := read(); !reflect.DeepEqual(got, want) {
		t.Fatalf("tunnel destinations read back as\n%+v\nwant\n%+v", got, want)
	}
	want[1].Weight = 5
	if errs := dp.Apply(ctxT(t), []director.Op{{Kind: director.OpUpdateDest, Service: svc, Dest: want[1]}}); errs != nil {
		t.Fatalf("update: %v", errors.Join(errs...))
	}
	if got := read(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a weight change:\n%+v\nwant\n%+v", got, want)
	}
}

// TestLabErrnoContract checks the answers the reconciler relies on to learn
// about drift without a dump (see director.Dataplane).
func TestLabErrnoContract(t *testing.T) {
	_, dp := newDir(t)
	s := svc("198.18.1.70", 80, 0)
	missing := svc("198.18.1.71", 80, 0)
	d := drDest("198.18.1.72", 80)
	gran := svc("198.18.1.73", 0, 60*time.Second)
	gran.PersistenceBits = 24
	ops := []director.Op{
		{Kind: director.OpAddService, Service: s},
		{Kind: director.OpAddDest, Service: s, Dest: d},
		{Kind: director.OpAddService, Service: s},                                                                                      // 2 EEXIST
		{Kind: director.OpUpdateService, Service: missing},                                                                             // 3 ESRCH
		{Kind: director.OpDelService, Service: missing},                                                                                // 4 ESRCH
		{Kind: director.OpAddDest, Service: missing, Dest: d},                                                                          // 5 ESRCH
		{Kind: director.OpAddDest, Service: s, Dest: d},                                                                                // 6 EEXIST
		{Kind: director.OpUpdateDest, Service: s, Dest: drDest("198.18.1.74", 80)},                                                     // 7 ENOENT
		{Kind: director.OpDelDest, Service: s, Dest: drDest("198.18.1.74", 80)},                                                        // 8 ENOENT
		{Kind: director.OpAddService, Service: func() director.Service { x := gran; x.Timeout = 1500 * time.Millisecond; return x }()}, // 9 never sent
		{Kind: director.OpAddService, Service: gran},                                                                                   // 10 ok
	}
	errs := dp.Apply(ctxT(t), ops)
	want := map[int]error{2: unix.EEXIST, 3: unix.ESRCH, 4: unix.ESRCH, 5: unix.ESRCH, 6: unix.EEXIST, 7: unix.ENOENT, 8: unix.ENOENT}
	for i, err := range errs {
		switch {
		case i == 9:
			if err == nil || !strings.Contains(err.Error(), "whole number of seconds") || !strings.Contains(err.Error(), "add-service") {
				t.Errorf("op 9: %v", err)
			}
		case want[i] != nil:
			if !errors.Is(err, want[i]) {
				t.Errorf("op %d (%s): %v, want %v", i, ops[i], err, want[i])
			}
			t.Logf("op %d: %v", i, err)
		case err != nil:
			t.Errorf("op %d (%s): %v", i, ops[i], err)
		}
	}
	if _, err := dp.Destinations(ctxT(t), missing.Key); !errors.Is(err, unix.ESRCH) {
		t.Errorf("Destinations of a missing service: %v, want ESRCH", err)
	}
	ds, err := dp.Destinations(ctxT(t), gran.Key)
	if err != nil || len(ds) != 0 {
		t.Errorf("Destinations of an empty service: %v, %v", ds, err)
	}
}

// TestLabReconcilerOverDataplane runs the director's reconciler on the
// kernel: program, idle sync with zero writes, a weight change with one
// write, and repair after someone runs `ipvsadm -C`.
func TestLabReconcilerOverDataplane(t *testing.T) {
	h, dp := newDir(t)
	ctx := ctxT(t)
	r := director.New(dp, slog.New(slog.NewTextHandler(tWriter{t}, nil)))
	desired := seed()
	res, err := r.Adopt(ctx, desired, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops.Total() != 11 || res.Failed.Total() != 0 {
		t.Fatalf("adopting an empty kernel wrote %s, failed %s; want 4 services and 7 destinations added", res.Ops, res.Failed)
	}
	res, err = r.Sync(ctx, desired)
	if err != nil || res.Ops.Total() != 0 {
		t.Fatalf("idle sync wrote %d ops (%v), want 0", res.Ops.Total(), err)
	}
	desired[2].Destinations[1].Weight = 5
	res, err = r.Sync(ctx, desired)
	if err != nil || res.Ops.Total() != 1 || res.Ops[director.OpUpdateDest] != 1 {
		t.Fatalf("weight change wrote %s (%v), want one update-dest", res.Ops, err)
	}
	tab, out := ipvsadm(t, h)
	for _, d := range tab["TCP 198.18.1.64:80"].Dests {
		if d.Addr == "198.18.1.66:80" && d.Numbers[0] != 5 {
			t.Errorf("weight after change: %+v\n%s", d, out)
		}
	}
	if _, err := h.Run(ctx, "ipvsadm", "-C"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	tab, out = ipvsadm(t, h)
	if len(tab) != 4 || len(tab["FWM 8"].Dests) != 2 || len(tab["TCP 198.18.1.63:0"].Dests) != 2 {
		t.Errorf("after ipvsadm -C and a resync:\n%s", out)
	}
}

// TestLabStats drives DR traffic through a persistent service and reads the
// counters and connection counts through Stats.
func TestLabStats(t *testing.T) {
	requireVM(t)
	tp := topo.New(t)
	client := tp.Host("client", "198.18.0.10/24")
	dir := tp.Host("dir", "198.18.0.1/24")
	rs := tp.Host("rs1", "198.18.0.21/24")
	dir.AddAddr("eth0", "198.18.0.100/32")
	rs.AddLoopbackVIP("198.18.0.100")
	rs.ServeHTTP(":80")
	dp := openIn(t, dir)
	s := svc("198.18.0.100", 80, 300*time.Second)
	if errs := dp.Apply(ctxT(t), addOps([]director.DesiredService{{Service: s, Destinations: []director.Destination{drDest("198.18.0.21", 80)}}})); errs != nil {
		t.Fatal(errors.Join(errs...))
	}
	for range 2 {
		if who, err := client.HTTPGet(ctxT(t), "http://198.18.0.100/"); err != nil || who != "rs1" {
			t.Fatalf("GET through the VIP: %q, %v", who, err)
		}
	}
	var st []ServiceStats
	deadline := time.Now().Add(15 * time.Second)
	for {
		var err error
		if st, err = dp.Stats(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		if len(st) == 1 && st[0].Counters.Conns >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(st) != 1 || st[0].Counters.Conns < 2 || len(st[0].Destinations) != 1 {
		t.Fatalf("stats %+v", st)
	}
	d := st[0].Destinations[0]
	if d.Counters.Conns < 2 || d.PersistentConns != 1 || d.ActiveConns+d.InactiveConns == 0 || d.Destination != drDest("198.18.0.21", 80) {
		t.Errorf("destination stats %+v", d)
	}
	if !director.SameService(st[0].Service, s) {
		t.Errorf("stats service %+v", st[0].Service)
	}
	if err := dp.ZeroCounters(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestLabSetSync converges the sync daemons: both roles, then master only,
// then none; ipvsadm --daemon is the witness.
func TestLabSetSync(t *testing.T) {
	h, dp := newDir(t)
	ctx := ctxT(t)
	master := SyncDaemon{State: SyncMaster, Interface: "eth0", SyncID: 3}
	backup := SyncDaemon{State: SyncBackup, Interface: "eth0", SyncID: 3}
	daemons := func() []ipvsadmtest.Daemon {
		t.Helper()
		out, err := h.Run(ctx, "ipvsadm", "-L", "--daemon")
		if err != nil {
			t.Fatal(err)
		}
		ds, err := ipvsadmtest.ParseDaemons(out)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return ds
	}
	if err := dp.SetSync(ctx, []SyncDaemon{master, backup}); err != nil {
		t.Fatal(err)
	}
	if ds := daemons(); len(ds) != 2 || ds[0].Fields["syncid"] != "3" {
		t.Fatalf("after starting both: %+v", ds)
	}
	// Unchanged: nothing restarts (the running daemons keep their state).
	if err := dp.SetSync(ctx, []SyncDaemon{backup, master}); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetSync(ctx, []SyncDaemon{master}); err != nil {
		t.Fatal(err)
	}
	if ds := daemons(); len(ds) != 1 || ds[0].Role != "master" {
		t.Fatalf("after dropping backup: %+v", ds)
	}
	master.SyncID = 4
	if err := dp.SetSync(ctx, []SyncDaemon{master}); err != nil {
		t.Fatal(err)
	}
	got, err := dp.SyncDaemons(ctx)
	if err != nil || len(got) != 1 || got[0].SyncID != 4 {
		t.Fatalf("after changing syncid: %+v, %v", got, err)
	}
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	defer scancel()
	if err := dp.SetSync(sctx, nil); err != nil {
		// Evidence for the hang syncSettle works around: the kernel's log of
		// sync threads and every task's state.
		out, _ := h.Run(ctx, "sh", "-c", "dmesg | grep IPVS | tail -8; ps -eLo pid,lwp,stat,wchan:32,comm | grep -v ' I '")
		t.Fatalf("stopping the sync daemons: %v\n%s", err, out)
	}
	if ds := daemons(); len(ds) != 0 {
		t.Fatalf("after stopping all: %+v", ds)
	}
}

// TestLabKnobs sets both knobs and reads them back, and through cat.
func TestLabKnobs(t *testing.T) {
	h, dp := newDir(t)
	ctx := ctxT(t)
	for _, k := range []Knobs{{ExpireNodestConn: true, ExpireQuiescentTemplate: true}, {ExpireNodestConn: false, ExpireQuiescentTemplate: true}, {}} {
		if err := dp.SetKnobs(ctx, k); err != nil {
			t.Fatal(err)
		}
		got, err := dp.Knobs(ctx)
		if err != nil || got != k {
			t.Errorf("Knobs = %+v, %v; want %+v", got, err, k)
		}
		out, err := h.Run(ctx, "cat", "/proc/sys/net/ipv4/vs/expire_nodest_conn", "/proc/sys/net/ipv4/vs/expire_quiescent_template")
		want := map[bool]string{true: "1", false: "0"}
		if f := strings.Fields(out); err != nil || len(f) != 2 || f[0] != want[k.ExpireNodestConn] || f[1] != want[k.ExpireQuiescentTemplate] {
			t.Errorf("cat sees %q (%v) for %+v", out, err, k)
		}
	}
}
