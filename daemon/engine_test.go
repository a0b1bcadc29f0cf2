package daemon

import (
	"context"
	"errors"
	"fmt"

	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/dptest"
	"github.com/lvsd/lvsd/director/ipvsdp"
)

// The engine tests change addresses, links and nftables. TestMain runs them
// in a private network namespace of their own (re-executing the test binary
// with CLONE_NEWNET), so the host is never touched and nothing needs cleanup.
const netnsEnv = "LVSD_DAEMON_TEST_NETNS"

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 && os.Getenv(netnsEnv) == "" {
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), netnsEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			os.Exit(0)
		case errors.As(err, &ee):
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "re-exec in a private network namespace:", err)
		os.Exit(1)
	}
	if os.Getenv(netnsEnv) != "" {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bring lo up:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

func needNetns(t *testing.T) {
	t.Helper()
	if os.Getenv(netnsEnv) == "" {
		t.Skip("needs root: runs in a private network namespace")
	}
}

// fakeKernel is an in-memory IPVS table with the namespace extras.
type fakeKernel struct {
	*dptest.Fake
	mu    sync.Mutex
	knobs ipvsdp.Knobs
	syncd []ipvsdp.SyncDaemon
}

func (k *fakeKernel) SetKnobs(_ context.Context, kn ipvsdp.Knobs) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.knobs = kn
	return nil
}

func (k *fakeKernel) SetSync(_ context.Context, want []ipvsdp.SyncDaemon) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.syncd = want
	return nil
}

func (k *fakeKernel) SyncDaemons(context.Context) ([]ipvsdp.SyncDaemon, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.syncd, nil
}

func (k *fakeKernel) Stats(context.Context) ([]ipvsdp.ServiceStats, error) {
	var out []ipvsdp.ServiceStats
	for _, s := range k.Table() {
		ss := ipvsdp.ServiceStats{Service: s.Service}
		for _, d := range s.Destinations {
			ss.Destinations = append(ss.Destinations, ipvsdp.DestStats{Destination: d})
		}
		out = append(out, ss)
	}
	return out, nil
}

func (k *fakeKernel) Close() error { return nil }

// rig is one lvsd engine running against a fake kernel in the test's netns.
type rig struct {
	t      *testing.T
	dir    string
	kern   *fakeKernel
	client *api.Client
	reload chan struct{}
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const linkName = "lvt0"

// setupLink creates an interface holding the real servers' addresses,
// so health checks connect to listeners in this namespace.
func setupLink(t *testing.T, addrs ...string) netlink.Link {
	t.Helper()
	if l, err := netlink.LinkByName(linkName); err == nil {
		netlink.LinkDel(l)
	}
	// A veth pair: this host kernel has no dummy links.
	la := netlink.NewLinkAttrs()
	la.Name = linkName
	link := &netlink.Veth{LinkAttrs: la, PeerName: linkName + "p"}
	if err := netlink.LinkAdd(link); err != nil {
		t.Fatal(err)
	}
	if peer, err := netlink.LinkByName(linkName + "p"); err == nil {
		netlink.LinkSetUp(peer)
	}
	t.Cleanup(func() { netlink.LinkDel(link) })
	for _, a := range addrs {
		addr, _ := netlink.ParseAddr(a + "/32")
		if err := netlink.AddrAdd(link, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	return link
}

// listen serves TCP on addr until the returned function closes it.
func listen(t *testing.T, addr string) func() {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { ln.Close() }) }
	t.Cleanup(stop)
	return stop
}

const baseConfig = `
[node]
name = "dir-t"
interface = "lvt0"
state_dir = "%[1]s/state"

[control]
socket = "%[1]s/lvsd.sock"

[ipvs]
resync_interval = "0s"

[metrics]
listen = "127.0.0.1:19100"

[[vip_group]]
name = "web"
addresses = ["198.18.1.63/32"]

[[service]]
name = "web"
group = "web"
address = "198.18.1.63"
port = 80
scheduler = "rr"
persistent = true
  [service.check]
  type = "tcp"
  interval = "100ms"
  timeout = "50ms"
  rise = 1
  fall = 2
  initial_delay = "10ms"
%[2]s
`

func backends(addrs ...string) string {
	var b strings.Builder
	for _, a := range addrs {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
	}
	return b.String()
}

func (r *rig) writeConfig(body string) {
	r.t.Helper()
	if err := os.WriteFile(filepath.Join(r.dir, "lvsd.toml"), []byte(fmt.Sprintf(baseConfig, r.dir, body)), 0o600); err != nil {
		r.t.Fatal(err)
	}
}

func startRig(t *testing.T, dir string, kern *fakeKernel, body string) *rig {
	t.Helper()
	r := &rig{t: t, dir: dir, kern: kern}
	r.writeConfig(body)
	return runRig(t, dir, kern)
}

// runRig starts lvsd on the config already in dir.
func runRig(t *testing.T, dir string, kern *fakeKernel) *rig {
	t.Helper()
	r := &rig{t: t, dir: dir, kern: kern, reload: make(chan struct{}), done: make(chan error, 1), logs: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		r.done <- Run(ctx, Options{
			ConfigPath: filepath.Join(dir, "lvsd.toml"), Log: log, Reload: r.reload,
			OpenKernel: func(context.Context, *slog.Logger) (Kernel, error) { return kern, nil },
			ConnTable:  filepath.Join(dir, "ip_vs_conn"),
		})
	}()
	r.client = api.NewUnixClient(filepath.Join(dir, "lvsd.sock"))
	r.eventually("control socket answers", func() bool { _, err := r.client.Status(context.Background()); return err == nil })
	t.Cleanup(func() { r.stop() })
	return r
}

func (r *rig) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("Run returned %v\nlogs:\n%s", err, r.logs)
		}
	case <-time.After(10 * time.Second):
		r.t.Fatalf("Run did not return\nlogs:\n%s", r.logs)
	}
}

func (r *rig) eventually(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s\nlogs:\n%s", what, r.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dests returns the fake kernel's destinations of the web service by address.
func (r *rig) dests() map[string]int {
	out := map[string]int{}
	for _, s := range r.kern.Table() {
		if s.Service.Key.Port == 80 {
			for _, d := range s.Destinations {
				out[d.Key.Address.String()] = d.Weight
			}
		}
	}
	return out
}

func sameMap(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func hasAddr(t *testing.T, addr string) bool {
	link, err := netlink.LinkByName(linkName)
	if err != nil {
		return false
	}
	as, _ := netlink.AddrList(link, netlink.FAMILY_ALL)
	for _, a := range as {
		if a.IP.String() == addr {
			return true
		}
	}
	return false
}

func opKinds(ops []director.Op) string {
	var s []string
	for _, o := range ops {
		s = append(s, o.Kind.String()+" "+o.Dest.Key.String())
	}
	return strings.Join(s, ", ")
}

func TestEngineEndToEndWithFakeKernel(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65", "198.18.1.66", "198.18.1.67")
	listen(t, "198.18.1.65:80")
	stop66 := listen(t, "198.18.1.66:80")
	listen(t, "198.18.1.67:80")
	dir := t.TempDir()
	kern := &fakeKernel{Fake: dptest.New()}
	r := startRig(t, dir, kern, backends("198.18.1.65", "198.18.1.66"))
	ctx := context.Background()
	outer := t

	r.eventually("both backends in IPVS", func() bool { return sameMap(r.dests(), map[string]int{"198.18.1.65": 1, "198.18.1.66": 1}) })
	r.eventually("the standalone node owns the VIP", func() bool { return hasAddr(t, "198.18.1.63") })
	if kern.knobs != (ipvsdp.Knobs{ExpireNodestConn: true, ExpireQuiescentTemplate: true}) {
		t.Errorf("knobs = %+v, want both on by default", kern.knobs)
	}

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://127.0.0.1:19100/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`lvsd_backend_up{backend="198.18.1.65:80",service="web"} 1`,
			`lvsd_backend_weight{backend="198.18.1.66:80",service="web"} 1`,
			`lvsd_vip_group_state{group="web",state="master"} 1`,
			`lvsd_vip_group_owner{group="web",owner="dir-t"} 1`,
			`lvsd_service_quorum_up{service="web"} 1`,
			`lvsd_reconcile_operations_total{op="add-dest"} 2`,
			`lvsd_scrape_error{source="ipvs"} 0`,
			`lvsd_healthchecks_total{backend="198.18.1.65:80",service="web"}`,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})

	t.Run("connections", func(t *testing.T) {
		// 198.18.0.10 holds a template to .65 on the web service (VIP:80).
		table := "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n" +
			"TCP C612000A 0000 C612013F 0050 C6120141 0050 NONE            300\n" +
			"TCP C612000A D9B3 C612013F 0050 C6120141 0050 ESTABLISHED     898\n" +
			"TCP C612000B D9B4 C612013F 0050 C6120142 0050 ESTABLISHED     898\n"
		if err := os.WriteFile(filepath.Join(dir, "ip_vs_conn"), []byte(table), 0o600); err != nil {
			t.Fatal(err)
		}
		conns, err := r.client.Connections(ctx, netip.MustParseAddr("198.18.0.10"), 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(conns) != 2 || !conns[0].Template || conns[0].Service != "web" || conns[0].Backend != "198.18.1.65:80" || conns[1].Template {
			t.Fatalf("connections of 198.18.0.10 = %+v", conns)
		}
		all, err := r.client.Connections(ctx, netip.Addr{}, 2)
		if err != nil || len(all) != 2 {
			t.Fatalf("limit 2: %d entries, %v", len(all), err)
		}
	})

	t.Run("operator actions", func(t *testing.T) {
		kern.ResetWrites()
		if _, err := r.client.Backend(ctx, "drain", api.BackendRequest{Service: "web", Backend: "198.18.1.65"}); err != nil {
			t.Fatal(err)
		}
		if w := kern.Writes(); len(w) != 1 || w[0].Kind != director.OpUpdateDest || w[0].Dest.Weight != 0 {
			t.Fatalf("drain wrote %s", opKinds(w))
		}
		st, err := r.client.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b := st.Services[0].Backends[0]; b.Admin != "drained" || b.Weight != 0 || b.ConfigWeight != 1 || !b.InKernel || b.Health != "up" {
			t.Fatalf("status of drained backend = %+v", b)
		}
		for _, step := range []struct {
			action, backend string
			weight          *int
			want            map[string]int
		}{
			{"undrain", "198.18.1.65:80", nil, map[string]int{"198.18.1.65": 1, "198.18.1.66": 1}},
			{"disable", "198.18.1.66", nil, map[string]int{"198.18.1.65": 1}},
			{"enable", "198.18.1.66", nil, map[string]int{"198.18.1.65": 1, "198.18.1.66": 1}},
			{"add", "198.18.1.67", intp(3), map[string]int{"198.18.1.65": 1, "198.18.1.66": 1, "198.18.1.67": 3}},
			{"remove", "198.18.1.67", nil, map[string]int{"198.18.1.65": 1, "198.18.1.66": 1}},
		} {
			if _, err := r.client.Backend(ctx, step.action, api.BackendRequest{Service: "web", Backend: step.backend, Weight: step.weight}); err != nil {
				t.Fatalf("%s %s: %v", step.action, step.backend, err)
			}
			if got := r.dests(); !sameMap(got, step.want) {
				t.Fatalf("after %s %s: kernel %v, want %v", step.action, step.backend, got, step.want)
			}
		}
		ev, _ := r.client.Events(ctx, time.Time{}, 100)
		if !containsEvent(ev, "operator", "web/198.18.1.65:80", "drained") {
			t.Errorf("no operator event for the drain in %+v", ev)
		}
	})

	t.Run("bad requests change nothing", func(t *testing.T) {
		kern.ResetWrites()
		for _, tc := range []struct {
			action, service, backend string
			status                   int
			want                     string
		}{
			{"drain", "nope", "198.18.1.65", 404, `unknown service "nope"`},
			{"drain", "web", "198.18.1.99", 404, "has no backend 198.18.1.99:80"},
			{"drain", "web", "198.18.1.65:81", 404, "has no backend"},
			{"drain", "web", "not-an-address", 400, "malformed backend"},
			{"undrain", "web", "198.18.1.65", 409, "is not drained"},
			{"enable", "web", "198.18.1.65", 409, "is not disabled"},
			{"add", "web", "198.18.1.65", 409, "already has backend"},
			{"add", "web", "2001:db8::5", 400, "ipv6 but service web is ipv4"},
			{"add", "web", "198.18.1.70:81", 400, "cannot change the port"},
		} {
			_, err := r.client.Backend(ctx, tc.action, api.BackendRequest{Service: tc.service, Backend: tc.backend})
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Status != tc.status || !strings.Contains(ae.Msg, tc.want) || ae.Hint == "" {
				t.Errorf("%s %s %s: %v, want %d %q with a hint", tc.action, tc.service, tc.backend, err, tc.status, tc.want)
			}
		}
		if _, err := r.client.Group(ctx, "failover", "nope"); err == nil {
			t.Error("failover of an unknown group succeeded")
		}
		if w := kern.Writes(); len(w) != 0 {
			t.Fatalf("rejected requests wrote %s", opKinds(w))
		}
	})

	t.Run("health removes and restores a backend", func(t *testing.T) {
		stop66()
		r.eventually("dead backend leaves IPVS", func() bool { return sameMap(r.dests(), map[string]int{"198.18.1.65": 1}) })
		st, _ := r.client.Status(ctx)
		if b := st.Services[0].Backends[1]; b.Health != "down" || !strings.Contains(b.Reason, "refused") || b.InKernel {
			t.Fatalf("status of the dead backend = %+v", b)
		}
		listen(outer, "198.18.1.66:80") // lives past this subtest
		r.eventually("backend comes back", func() bool { return sameMap(r.dests(), map[string]int{"198.18.1.65": 1, "198.18.1.66": 1}) })
	})

	t.Run("reload applies only the difference", func(t *testing.T) {
		kern.ResetWrites()
		r.writeConfig(backends("198.18.1.66"))
		res, err := r.client.Reload(ctx)
		if err != nil || !res.OK {
			t.Fatalf("reload: %+v %v", res, err)
		}
		if w := kern.Writes(); len(w) != 1 || w[0].Kind != director.OpDelDest || w[0].Dest.Key.Address.String() != "198.18.1.65" {
			t.Fatalf("removing one backend by reload wrote %s", opKinds(w))
		}
		kern.ResetWrites()
		r.writeConfig(backends("198.18.1.66") + "  weight = 70000\n")
		res, err = r.client.Reload(ctx)
		if err != nil || res.OK || len(res.Errors) == 0 || !strings.Contains(res.Errors[0], "lvsd.toml:") {
			t.Fatalf("invalid reload: %+v %v", res, err)
		}
		if w := kern.Writes(); len(w) != 0 {
			t.Fatalf("invalid reload wrote %s", opKinds(w))
		}
		// SIGHUP path: the reload channel.
		r.writeConfig(backends("198.18.1.65", "198.18.1.66"))
		r.reload <- struct{}{}
		r.eventually("backend re-added by SIGHUP", func() bool { return sameMap(r.dests(), map[string]int{"198.18.1.65": 1, "198.18.1.66": 1}) })
	})

	// Drain, stop, start again: IPVS is left in place, adopted without a
	// write, and the drain survives the restart.
	if _, err := r.client.Backend(ctx, "drain", api.BackendRequest{Service: "web", Backend: "198.18.1.66"}); err != nil {
		t.Fatal(err)
	}
	r.stop()
	if hasAddr(t, "198.18.1.63") {
		t.Error("a stopped lvsd still holds the VIP")
	}
	if got := r.dests(); !sameMap(got, map[string]int{"198.18.1.65": 1, "198.18.1.66": 0}) {
		t.Fatalf("stopping lvsd changed IPVS: %v", got)
	}
	kern.ResetWrites()
	r2 := startRig(t, dir, kern, backends("198.18.1.65", "198.18.1.66"))
	r2.eventually("VIP taken again", func() bool { return hasAddr(t, "198.18.1.63") })
	time.Sleep(300 * time.Millisecond) // a few health-check rounds
	if w := kern.Writes(); len(w) != 0 {
		t.Fatalf("restart wrote %s; want adoption without writes", opKinds(w))
	}
	if got := r2.dests(); !sameMap(got, map[string]int{"198.18.1.65": 1, "198.18.1.66": 0}) {
		t.Fatalf("after restart: %v (the drain must persist)", got)
	}
}

func TestEngineRemovesServiceDroppedWhileDown(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65")
	dir := t.TempDir()
	kern := &fakeKernel{Fake: dptest.New()}
	foreign := director.Service{Key: director.ServiceKey{Family: director.IPv4, Protocol: director.TCP, Address: netip.MustParseAddr("198.18.9.9"), Port: 443}, Scheduler: "wlc"}
	kern.Put(foreign)
	body := backends("198.18.1.65") + `
[[service]]
name = "ssh"
address = "198.18.1.63"
port = 22
persistent = true
  [[service.backend]]
  address = "198.18.1.65"
`
	r := startRig(t, dir, kern, body)
	r.eventually("two services", func() bool { return len(kern.Table()) == 3 })
	r.stop()
	// The ssh service leaves the config while lvsd is down.
	r2 := startRig(t, dir, kern, backends("198.18.1.65"))
	r2.eventually("ssh removed at start", func() bool { return len(kern.Table()) == 2 })
	for _, s := range kern.Table() {
		if s.Service.Key.Port == 22 {
			t.Fatal("service dropped from the config survived a restart")
		}
	}
	if _, err := kern.Destinations(context.Background(), foreign.Key); err != nil {
		t.Fatalf("foreign service touched: %v", err)
	}
}

func intp(i int) *int { return &i }

func containsEvent(ev []api.Event, kind, subject, to string) bool {
	for _, e := range ev {
		if e.Kind == kind && e.Subject == subject && e.To == to {
			return true
		}
	}
	return false
}

// A reload that turns the periodic resync on arms it at once (it used to
// wait for the old interval, forever when that was 0s).
func TestEngineReloadArmsResync(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65")
	listen(t, "198.18.1.65:80")
	dir := t.TempDir()
	kern := &fakeKernel{Fake: dptest.New()}
	r := startRig(t, dir, kern, backends("198.18.1.65"))
	r.eventually("backend in IPVS", func() bool { return sameMap(r.dests(), map[string]int{"198.18.1.65": 1}) })
	kern.Flush() // someone runs ipvsadm -C
	path := filepath.Join(dir, "lvsd.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), `resync_interval = "0s"`, `resync_interval = "100ms"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if res, err := r.client.Reload(context.Background()); err != nil || !res.OK {
		t.Fatalf("reload: %+v %v", res, err)
	}
	r.eventually("resync repairs the flushed table", func() bool { return sameMap(r.dests(), map[string]int{"198.18.1.65": 1}) })
}
