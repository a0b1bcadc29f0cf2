package vrrp

// Failover scenarios on the host: two directors, a witness and a client on
// one bridge (lab/topo), each node a separate process (this test binary
// re-executed with nodeArg), so kill -9 and SIGTERM are real.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsd/lvsd/lab/topo"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	nodeArg   = "-vrrp-test-node"
	rtExecArg = "-vrrp-test-rt-exec"
)

// runRealtimeExec switches this process to SCHED_RR, runs a command the way
// track and notify scripts run, and prints its own policy and the child's
// (field 41 of /proc/PID/stat).
func runRealtimeExec() int {
	if err := setRealtime(1); err != nil {
		fmt.Println("setRealtime:", err)
		return 1
	}
	self, _ := os.ReadFile("/proc/self/stat")
	out, why := execOnce(context.Background(), []string{"sh", "-c", "cut -d' ' -f41 /proc/self/stat"}, 5*time.Second, nil)
	if why != "" {
		fmt.Println("exec:", why)
		return 1
	}
	fmt.Printf("parent=%s child=%s\n", strings.Fields(string(self))[40], out)
	return 0
}

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == nodeArg {
		os.Exit(runTestNode(os.Args[2]))
	}
	if len(os.Args) == 2 && os.Args[1] == rtExecArg {
		os.Exit(runRealtimeExec())
	}
	os.Exit(m.Run())
}

// runTestNode runs one node from a JSON spec until SIGTERM/SIGINT, which
// hands over gracefully.
func runTestNode(path string) int {
	level := slog.LevelInfo
	if os.Getenv("LVSD_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	b, err := os.ReadFile(path)
	if err != nil {
		lg.Error("reading spec", "err", err)
		return 2
	}
	var spec Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		lg.Error("parsing spec", "path", path, "err", err)
		return 2
	}
	n, err := New(spec, lg)
	if err != nil {
		lg.Error("new node", "err", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := n.Run(ctx); err != nil {
		lg.Error("run", "err", err)
		return 1
	}
	lg.Info("stopped")
	return 0
}

var (
	vip4 = netip.MustParsePrefix("198.18.0.100/32")
	vip6 = netip.MustParsePrefix("2001:db8::100/128")
	key  = []byte("lvsd-test-gossip-key-32-bytes!!!")
)

type lab struct {
	t       *testing.T
	tp      *topo.Topo
	client  *topo.Host
	hosts   map[string]*topo.Host // dir-a, dir-b, wit
	addr    map[string]string     // name -> gossip address
	procs   map[string]*topo.Proc
	specs   map[string]Spec
	dir     string
	witness bool
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces (CI runs as root)")
	}
}

// newLab builds client, dir-a (priority 200), dir-b (100) and, if asked, a
// witness, and starts the nodes. mod adjusts each spec before start.
func newLab(t *testing.T, witness bool, mod func(name string, s *Spec)) *lab {
	needRoot(t)
	l := &lab{t: t, tp: topo.New(t), hosts: map[string]*topo.Host{}, addr: map[string]string{},
		procs: map[string]*topo.Proc{}, specs: map[string]Spec{}, dir: t.TempDir(), witness: witness}
	l.client = l.tp.Host("client", "198.18.0.10/24", "2001:db8::10/64")
	names := []string{"dir-a", "dir-b"}
	if witness {
		names = append(names, "wit")
	}
	for i, name := range names {
		l.hosts[name] = l.tp.Host(name, fmt.Sprintf("198.18.0.%d/24", 11+i), fmt.Sprintf("2001:db8::%d/64", 11+i))
		l.addr[name] = fmt.Sprintf("198.18.0.%d:7946", 11+i)
	}
	var peers []string
	for _, n := range names {
		peers = append(peers, l.addr[n])
	}
	for i, name := range names {
		s := Spec{Node: NodeSpec{Name: name, Interface: "eth0"},
			// dead_after is generous here: these tests check behaviour, and on
			// a shared 2-core machine running other packages' tests (load 12
			// seen) both directions between two nodes stalled for up to
			// 460 ms. bench/failover measures speed with the defaults.
			Cluster: &ClusterSpec{Bind: l.addr[name], Peers: peers, Key: key, Members: names,
				HeartbeatInterval: 50 * time.Millisecond, DeadAfter: time.Second}}
		if witness {
			s.Cluster.Witnesses = []string{"wit"}
		}
		if name == "wit" {
			s.Witness = true
		} else {
			s.Groups = []GroupSpec{{Name: "web", Addresses: []netip.Prefix{vip4, vip6}, Priority: 200 - 100*i,
				Preempt: true, GARPRefresh: 10 * time.Second}}
		}
		if mod != nil {
			mod(name, &s)
		}
		l.specs[name] = s
	}
	t.Cleanup(func() {
		if t.Failed() {
			if os.Getenv("LVSD_TEST_DEBUG") != "" {
				for _, p := range l.procs {
					p.Signal(syscall.SIGQUIT) // goroutine dump into the output
				}
				time.Sleep(300 * time.Millisecond)
			}
			for name, p := range l.procs {
				t.Logf("--- %s output:\n%s", name, p.Output())
			}
		}
	})
	for _, name := range names {
		l.start(name)
	}
	return l
}

func (l *lab) start(name string) {
	l.t.Helper()
	b, err := json.Marshal(l.specs[name])
	if err != nil {
		l.t.Fatal(err)
	}
	path := filepath.Join(l.dir, name+".json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		l.t.Fatal(err)
	}
	if old := l.procs[name]; old != nil {
		l.procs[name+"-old"] = old
	}
	l.procs[name] = l.hosts[name].Start(os.Args[0], nodeArg, path)
}

// holders lists the directors whose eth0 holds the VIP (both families).
func (l *lab) holders() []string {
	l.t.Helper()
	var out []string
	for _, name := range []string{"dir-a", "dir-b", "dir-c"} {
		h := l.hosts[name]
		if h == nil {
			continue
		}
		link, err := h.Netlink().LinkByName("eth0")
		if err != nil {
			l.t.Fatalf("%s eth0: %v", name, err)
		}
		addrs, err := h.Netlink().AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			l.t.Fatalf("%s addresses: %v", name, err)
		}
		n := 0
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && (ip.Unmap() == vip4.Addr() || ip == vip6.Addr()) {
				n++
			}
		}
		switch n {
		case 2:
			out = append(out, name)
		case 1:
			out = append(out, name+"(partial)")
		}
	}
	return out
}

// waitHolders waits until exactly want hold the VIP and returns how long
// that took.
func (l *lab) waitHolders(within time.Duration, want ...string) time.Duration {
	l.t.Helper()
	start := time.Now()
	var got []string
	for time.Since(start) < within {
		if got = l.holders(); slices.Equal(got, want) {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.t.Fatalf("VIP holders after %v: %v, want %v", within, got, want)
	return 0
}

// settle waits until exactly want hold the VIP for 600 ms in a row (nodes
// starting together may both claim until they hear each other).
func (l *lab) settle(want ...string) {
	l.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		l.waitHolders(time.Until(deadline), want...)
		stable := true
		for end := time.Now().Add(600 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if !slices.Equal(l.holders(), want) {
				stable = false
				break
			}
		}
		if stable {
			return
		}
	}
	l.t.Fatalf("VIP holders did not settle on %v", want)
}

// stayHolders checks that exactly want hold the VIP for the whole period.
func (l *lab) stayHolders(period time.Duration, want ...string) {
	l.t.Helper()
	for end := time.Now().Add(period); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if got := l.holders(); !slices.Equal(got, want) {
			l.t.Fatalf("VIP holders changed to %v, want %v throughout %v", got, want, period)
		}
	}
}

// learnVIP makes the client resolve the VIP (both families) through a TCP
// connect attempt, and waits out the neighbour table's locktime (1 s),
// inside which Linux ignores gratuitous ARP for an entry.
func (l *lab) learnVIP() {
	l.t.Helper()
	for _, a := range []netip.Addr{vip4.Addr(), vip6.Addr()} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := l.client.Dial(ctx, "tcp", net.JoinHostPort(a.String(), "9"))
		cancel()
		if err == nil {
			c.Close()
		}
		if _, ok := l.client.Neighbor(a.String()); !ok {
			l.t.Fatalf("client did not resolve %s", a)
		}
	}
	time.Sleep(1100 * time.Millisecond)
}

// waitClientMAC waits until the client's neighbour entries for the VIP point
// at owner's MAC, without the client sending anything: only the new owner's
// gratuitous ARP / unsolicited NA can move them.
func (l *lab) waitClientMAC(owner string, within time.Duration) {
	l.t.Helper()
	want := l.hosts[owner].MAC("eth0")
	start := time.Now()
	for _, a := range []netip.Addr{vip4.Addr(), vip6.Addr()} {
		for {
			got, ok := l.client.Neighbor(a.String())
			if ok && got.String() == want.String() {
				break
			}
			if time.Since(start) > within {
				l.t.Fatalf("client's neighbour entry for %s is %v (ok=%v), want %s (%s)", a, got, ok, want, owner)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// isolate stops the two directors' bridge ports from talking to each other
// (bridge port isolation); both still reach the client and the witness.
func (l *lab) isolate(on bool) {
	l.t.Helper()
	sw, err := netns.GetFromName(l.tp.Prefix() + "-sw")
	if err != nil {
		l.t.Fatalf("switch namespace: %v", err)
	}
	defer sw.Close()
	nl, err := netlink.NewHandleAt(sw)
	if err != nil {
		l.t.Fatalf("netlink in switch: %v", err)
	}
	defer nl.Close()
	for _, name := range []string{"dir-a", "dir-b"} {
		eth0, err := l.hosts[name].Netlink().LinkByName("eth0")
		if err != nil {
			l.t.Fatal(err)
		}
		// A veth's link index names its peer: the bridge port.
		port, err := nl.LinkByIndex(eth0.Attrs().ParentIndex)
		if err != nil {
			l.t.Fatalf("bridge port of %s: %v", name, err)
		}
		if err := nl.LinkSetIsolated(port, on); err != nil {
			l.t.Fatalf("isolate %s: %v", name, err)
		}
	}
}

func (l *lab) logf(format string, a ...any) { l.t.Logf(format, a...) }

func TestNSKillOwnerAndRejoinWithPreempt(t *testing.T) {
	l := newLab(t, false, nil)
	l.settle("dir-a")
	l.learnVIP()
	if err := l.procs["dir-a"].Kill(); err != nil {
		t.Fatal(err)
	}
	d := l.waitHolders(2*time.Second, "dir-a", "dir-b") // a's crash leaves its copy, as with keepalived
	l.waitClientMAC("dir-b", time.Second)
	l.logf("kill -9: dir-b took over after %v", d)
	time.Sleep(1100 * time.Millisecond) // client's locktime
	l.start("dir-a")                    // removes its stale copy, then preempts
	l.waitHolders(3*time.Second, "dir-a")
	l.waitClientMAC("dir-a", 2*time.Second)
}

func TestNSLinkDownWithWitness(t *testing.T) {
	l := newLab(t, true, nil)
	l.settle("dir-a")
	l.learnVIP()
	l.hosts["dir-a"].LinkDown()
	// dir-a loses carrier: fault, and no quorum anyway; dir-b needs the
	// witness's vote.
	d := l.waitHolders(2*time.Second, "dir-b")
	l.waitClientMAC("dir-b", time.Second)
	l.logf("link down: dir-b sole owner after %v", d)
	time.Sleep(1100 * time.Millisecond)
	l.hosts["dir-a"].LinkUp()
	l.waitHolders(3*time.Second, "dir-a")
	l.waitClientMAC("dir-a", 2*time.Second)
}

func TestNSSigtermHandsOver(t *testing.T) {
	l := newLab(t, false, nil)
	l.settle("dir-a")
	l.learnVIP()
	if err := l.procs["dir-a"].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d := l.waitHolders(2*time.Second, "dir-b")
	l.waitClientMAC("dir-b", time.Second)
	l.logf("SIGTERM: dir-b sole owner after %v (polling granularity 5 ms)", d)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.procs["dir-a"].Wait(ctx); err != nil {
		t.Fatalf("dir-a did not exit cleanly: %v", err)
	}
	if !strings.Contains(l.procs["dir-a"].Output(), "state=stopped") {
		t.Fatalf("dir-a did not report its stop")
	}
}

func TestNSTrackScriptLowersPriority(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "app-down")
	l := newLab(t, false, func(name string, s *Spec) {
		if name == "dir-a" {
			s.TrackScripts = []TrackScriptSpec{{Name: "chk_app", Command: []string{"sh", "-c", "test ! -e " + flag},
				Interval: 50 * time.Millisecond, Weight: -150, Fall: 2, Rise: 2}}
			s.Groups[0].TrackScript = []TrackRef{{Name: "chk_app"}}
		}
	})
	l.settle("dir-a")
	l.learnVIP()
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l.waitHolders(2*time.Second, "dir-b")
	l.waitClientMAC("dir-b", time.Second)
	time.Sleep(1100 * time.Millisecond)
	os.Remove(flag) // priority restored: dir-a preempts back
	l.waitHolders(2*time.Second, "dir-a")
	l.waitClientMAC("dir-a", time.Second)
}

func TestNSPartitionWithoutWitnessAndHeal(t *testing.T) {
	l := newLab(t, false, nil)
	l.settle("dir-a")
	l.learnVIP()
	l.isolate(true)
	// Two directors and no third party: both own (documented split brain).
	l.waitHolders(2*time.Second, "dir-a", "dir-b")
	l.waitClientMAC("dir-b", time.Second)
	time.Sleep(500 * time.Millisecond)
	l.isolate(false)
	d := l.waitHolders(time.Second, "dir-a")
	// The winner re-announces: the client, last told dir-b, must move back
	// without sending anything itself.
	l.waitClientMAC("dir-a", 2*time.Second)
	l.logf("partition healed: single owner after %v", d)
}

func TestNSPartitionWithWitness(t *testing.T) {
	l := newLab(t, true, nil)
	l.settle("dir-a")
	l.learnVIP()
	l.isolate(true)
	// dir-b cannot see dir-a but the witness votes for the live owner.
	l.stayHolders(time.Second, "dir-a")
	l.isolate(false)
	l.stayHolders(500*time.Millisecond, "dir-a")
	mac, _ := l.client.Neighbor(vip4.Addr().String())
	if mac.String() != l.hosts["dir-a"].MAC("eth0").String() {
		t.Fatalf("client's VIP entry moved to %v during the partition", mac)
	}
}

func TestNSWrongKeyCannotInfluence(t *testing.T) {
	l := newLab(t, false, nil)
	l.settle("dir-a")
	// An intruder with a higher priority for the same group but the wrong
	// key: it cannot join, and its heartbeats (which would make dir-a hand
	// over) fail decryption. Its own VIP differs so we can tell who holds
	// what.
	c := l.tp.Host("dir-c", "198.18.0.20/24")
	l.hosts["dir-c"] = c
	var peers []string
	for _, n := range []string{"dir-a", "dir-b"} {
		peers = append(peers, l.addr[n])
	}
	l.specs["dir-c"] = Spec{Node: NodeSpec{Name: "dir-c", Interface: "eth0"},
		Cluster: &ClusterSpec{Bind: "198.18.0.20:7946", Peers: peers, Key: []byte("a-different-key-of-32-bytes!!!!!"),
			Members: []string{"dir-a", "dir-b", "dir-c"}},
		Groups: []GroupSpec{{Name: "web", Addresses: []netip.Prefix{netip.MustParsePrefix("198.18.0.200/32")}, Priority: 254, Preempt: true}}}
	l.start("dir-c")
	l.stayHolders(1500*time.Millisecond, "dir-a")
	out := l.procs["dir-a"].Output()
	if !strings.Contains(out, "ecrypt") {
		t.Fatalf("dir-a never reported undecryptable packets from the intruder")
	}
	if strings.Contains(out, "dir-c") {
		t.Fatalf("dir-a mentions the intruder by name: it was heard:\n%s", out)
	}
}

func TestNSRejoinWithoutPreempt(t *testing.T) {
	l := newLab(t, false, func(_ string, s *Spec) {
		if len(s.Groups) > 0 {
			s.Groups[0].Preempt = false
		}
	})
	l.settle("dir-a")
	l.learnVIP()
	if err := l.procs["dir-a"].Kill(); err != nil {
		t.Fatal(err)
	}
	l.waitHolders(2*time.Second, "dir-a", "dir-b")
	l.waitClientMAC("dir-b", time.Second)
	l.start("dir-a") // higher priority, but no preemption: dir-b keeps it
	l.waitHolders(2*time.Second, "dir-b")
	l.stayHolders(time.Second, "dir-b")
	mac, _ := l.client.Neighbor(vip4.Addr().String())
	if mac.String() != l.hosts["dir-b"].MAC("eth0").String() {
		t.Fatalf("client's VIP entry moved to %v after dir-a rejoined", mac)
	}
}

func TestRealtimeNotInheritedByScripts(t *testing.T) {
	needRoot(t)
	out, err := exec.Command(os.Args[0], rtExecArg).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// SCHED_RR is 2, SCHED_OTHER 0.
	if got := strings.TrimSpace(string(out)); got != "parent=2 child=0" {
		t.Fatalf("got %q, want parent=2 child=0", got)
	}
}
