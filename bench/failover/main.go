// Command failover measures client-observed VIP failover in network
// namespaces on the host (issue 5): two directors and a client on one bridge
// (lab/topo); each director answers TCP on the VIP while it owns it; the
// client starts a new connect every 10 ms with a 100 ms timeout; the owner's
// link goes down (or it is stopped gracefully) at a random phase; the
// failover time is from that moment to the end of the first connect started
// after it that the new owner answered. The same runs with keepalived (VRRPv3 advert_int
// 0.1 and VRRPv2 advert_int 1) in the same topology, and the ratios are
// printed. -stability runs an lvsd pair under a CPU hog and counts ownership
// changes.
//
//	go run ./bench/failover -trials 10
//	go run ./bench/failover -stability 5m
//
// Needs root (namespaces). The lvsd directors are real lvsd processes
// (`lvsd --config`, built from ./cmd/lvsd into a temp dir unless -lvsd names
// a binary), each with a config of its own: [cluster] with a generated
// 32-byte key file, the default heartbeat_interval (20ms), dead_after
// (100ms) and realtime_priority, and one [[vip_group]] with the VIP on eth0,
// no services (so no IPVS). A graceful stop is SIGTERM to the owner's lvsd,
// restarted for the next trial.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"log"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/lab/topo"
	"github.com/vishvananda/netlink"
)

var (
	vip4    = netip.MustParsePrefix("198.18.0.100/32")
	vipPort = "8080"
)

func main() {
	hog := flag.Bool("hog", false, "internal: burn every CPU until killed")
	lvsdBin := flag.String("lvsd", "", "the lvsd binary to run (default: go build -o <tmp>/lvsd ./cmd/lvsd, from the repo root)")
	trials := flag.Int("trials", 10, "trials per scenario (at least 10 for the issue's figures)")
	stability := flag.Duration("stability", 0, "instead of failover trials: run an lvsd pair this long under a CPU hog and count ownership changes")
	withKA := flag.Bool("keepalived", true, "also measure keepalived (installed with apt-get if missing)")
	realtime := flag.Int("realtime", 0, "lvsd's realtime_priority (SCHED_RR) for the directors (0: lvsd's default, -1: normal scheduling)")
	flag.Parse()
	if *hog {
		burn()
	}
	if os.Geteuid() != 0 {
		log.Fatal("failover bench: needs root for network namespaces")
	}
	b := &bench{tb: newTB(), dir: mustTempDir(), realtime: *realtime, lvsd: *lvsdBin}
	b.tb.Cleanup(func() { os.RemoveAll(b.dir) })
	defer b.tb.cleanup()
	b.prepareLVSD()
	go func() { // Ctrl-C: clean up namespaces and processes, then exit
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		<-c
		b.tb.cleanup()
		os.Exit(130)
	}()
	if *stability > 0 {
		b.stability(*stability)
		return
	}
	if *trials < 1 {
		log.Fatal("-trials must be at least 1")
	}
	res := map[string][]time.Duration{}
	res["lvsd link-down"] = b.run("lvsd", "link-down", *trials)
	res["lvsd graceful"] = b.run("lvsd", "graceful", *trials)
	if *withKA {
		installKeepalived()
		res["keepalived v3 0.1s link-down"] = b.run("ka3", "link-down", *trials)
		res["keepalived v3 0.1s graceful"] = b.run("ka3", "graceful", *trials)
		res["keepalived v2 1s link-down"] = b.run("ka2", "link-down", *trials)
	}
	fmt.Printf("\nclient-observed failover, %d trials each (new TCP connect every 10 ms, 100 ms timeout)\n", *trials)
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range res {
			if !yield(k) {
				return
			}
		}
	})
	for _, n := range names {
		mn, md, mx := stats(res[n])
		fmt.Printf("  %-30s min %6.1f ms  median %6.1f ms  max %6.1f ms  (n=%d)\n", n, ms(mn), ms(md), ms(mx), len(res[n]))
	}
	if ka := res["keepalived v3 0.1s link-down"]; len(ka) > 0 {
		_, l, _ := stats(res["lvsd link-down"])
		_, k, _ := stats(ka)
		_, k2, _ := stats(res["keepalived v2 1s link-down"])
		fmt.Printf("  ratio lvsd/keepalived-v3 (link-down medians): %.2f (target <= 0.5)\n", ms(l)/ms(k))
		fmt.Printf("  ratio lvsd/keepalived-v2 (link-down medians): %.3f\n", ms(l)/ms(k2))
	}
	_, l, lmax := stats(res["lvsd link-down"])
	_, g, _ := stats(res["lvsd graceful"])
	fmt.Printf("  targets: link-down median %.1f ms (<= 150), max %.1f ms (<= 300); graceful median %.1f ms (<= 50)\n", ms(l), ms(lmax), ms(g))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func stats(ds []time.Duration) (mn, med, mx time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	med = s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[0], med, s[len(s)-1]
}

// bench holds one run's state.
type bench struct {
	tb       *tb
	dir      string
	realtime int    // -realtime
	lvsd     string // the lvsd binary
	keyFile  string // the cluster's gossip key
}

// prepareLVSD builds lvsd unless -lvsd named a binary, and writes the
// cluster's gossip key (32 random bytes, base64).
func (b *bench) prepareLVSD() {
	if b.lvsd == "" {
		b.lvsd = filepath.Join(b.dir, "lvsd")
		cmd := exec.Command("go", "build", "-o", b.lvsd, "./cmd/lvsd")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.tb.Fatalf("go build ./cmd/lvsd (run the benchmark from the repo root, or pass -lvsd PATH): %v\n%s", err, out)
		}
	} else if abs, err := filepath.Abs(b.lvsd); err == nil {
		b.lvsd = abs
	}
	if _, err := os.Stat(b.lvsd); err != nil {
		b.tb.Fatalf("-lvsd: %v", err)
	}
	k := make([]byte, 32)
	rand.Read(k)
	b.keyFile = filepath.Join(b.dir, "gossip.key")
	if err := os.WriteFile(b.keyFile, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
		b.tb.Fatalf("%v", err)
	}
}

// pair is one topology: client, dir-a (priority 200, the initial owner) and
// dir-b (100), running one system under test.
type pair struct {
	b      *bench
	system string // lvsd, ka3, ka2
	tp     *topo.Topo
	client *topo.Host
	hosts  map[string]*topo.Host
	procs  map[string]*topo.Proc   // the running process of each director
	runs   map[string][]*topo.Proc // every lvsd process of each director, for logs
	probes *prober
}

func (b *bench) newPair(system string) *pair {
	p := &pair{b: b, system: system, tp: topo.New(b.tb), hosts: map[string]*topo.Host{}, procs: map[string]*topo.Proc{},
		runs: map[string][]*topo.Proc{}}
	p.client = p.tp.Host("client", "198.18.0.10/24")
	for i, n := range []string{"dir-a", "dir-b"} {
		h := p.tp.Host(n, fmt.Sprintf("198.18.0.%d/24", 11+i))
		p.hosts[n] = h
		ln, err := h.Listen("tcp", ":"+vipPort)
		if err != nil {
			b.tb.Fatalf("%v", err)
		}
		id := []byte{n[len(n)-1]} // "a" or "b": who answered
		go func() {               // answer connects while we own the VIP
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write(id)
				c.Close()
			}
		}()
		b.tb.Cleanup(func() { ln.Close() })
	}
	for _, n := range []string{"dir-a", "dir-b"} {
		p.start(n)
	}
	p.probes = newProber(p.client, net.JoinHostPort(vip4.Addr().String(), vipPort))
	b.tb.Cleanup(p.probes.stop)
	return p
}

func (p *pair) start(name string) {
	prio := 200
	if name == "dir-b" {
		prio = 100
	}
	h := p.hosts[name]
	switch p.system {
	case "lvsd":
		p.startLVSD(name, prio)
	default:
		version, advert := 3, "0.1"
		if p.system == "ka2" {
			version, advert = 2, "1"
		}
		conf := fmt.Sprintf(`global_defs {
  router_id %s
  vrrp_version %d
  script_user root
}
vrrp_instance web {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority %d
  advert_int %s
  virtual_ipaddress {
    %s dev eth0
  }
}
`, name, version, prio, advert, vip4)
		base := filepath.Join(p.b.dir, p.tp.Prefix()+"-"+name)
		if err := os.WriteFile(base+".conf", []byte(conf), 0o600); err != nil {
			p.b.tb.Fatalf("%v", err)
		}
		p.procs[name] = h.Start("keepalived", "--dont-fork", "--log-console", "--vrrp", "--use-file", base+".conf",
			"--pid", base+".pid", "--vrrp_pid", base+".vrrp.pid")
	}
}

func addrOf(name string) string {
	if name == "dir-a" {
		return "198.18.0.11"
	}
	return "198.18.0.12"
}

func peerOf(name string) string {
	if name == "dir-a" {
		return "dir-b"
	}
	return "dir-a"
}

// startLVSD writes name's lvsd config (on the first start) and runs lvsd
// until its control socket answers.
func (p *pair) startLVSD(name string, prio int) {
	h := p.hosts[name]
	dir := filepath.Join(p.b.dir, p.tp.Prefix()+"-"+name)
	path, sock := filepath.Join(dir, "lvsd.toml"), filepath.Join(dir, "lvsd.sock")
	if _, err := os.Stat(path); err != nil {
		rt := ""
		switch {
		case p.b.realtime < 0:
			rt = "realtime_priority = 0\n"
		case p.b.realtime > 0:
			rt = fmt.Sprintf("realtime_priority = %d\n", p.b.realtime)
		}
		conf := fmt.Sprintf(`[node]
name = %q
interface = "eth0"
state_dir = %q

[control]
socket = %q

[cluster]
bind = "%s:7946"
peers = ["%s:7946"]
key_file = %q
members = ["dir-a", "dir-b"]
heartbeat_interval = "20ms"
dead_after = "100ms"
%s
[[vip_group]]
name = "web"
addresses = [%q]
interface = "eth0"
priority = %d
`, name, filepath.Join(dir, "state"), sock, addrOf(name), addrOf(peerOf(name)), p.b.keyFile, rt, vip4, prio)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			p.b.tb.Fatalf("%v", err)
		}
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			p.b.tb.Fatalf("%v", err)
		}
	}
	pr := h.Start(p.b.lvsd, "--config", path)
	p.procs[name] = pr
	p.runs[name] = append(p.runs[name], pr)
	client := api.NewUnixClient(sock)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if pr.Exited() {
			p.b.tb.Fatalf("lvsd %s exited at start:\n%s", name, pr.Output())
		}
		if _, err := client.Status(context.Background()); err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.b.tb.Fatalf("lvsd %s: control socket did not answer within 20 s:\n%s", name, pr.Output())
		}
	}
}

// logs is every lvsd process's output, for a failure message.
func (p *pair) logs() string {
	var sb strings.Builder
	for _, n := range []string{"dir-a", "dir-b"} {
		for i, pr := range p.runs[n] {
			fmt.Fprintf(&sb, "\n--- lvsd %s run %d (pid %d)\n%s", n, i+1, pr.PID(), pr.Output())
		}
	}
	return sb.String()
}

// holders lists the directors whose eth0 holds the VIP.
func (p *pair) holders() []string {
	var out []string
	for _, n := range []string{"dir-a", "dir-b"} {
		h := p.hosts[n]
		link, err := h.Netlink().LinkByName("eth0")
		if err != nil {
			continue
		}
		addrs, _ := h.Netlink().AddrList(link, netlink.FAMILY_V4)
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == vip4.Addr() {
				out = append(out, n)
			}
		}
	}
	return out
}

// settle waits until only dir-a holds the VIP, the client reaches it, and
// nothing changed for 1.5 s (longer than the neighbour locktime of 1 s,
// inside which Linux ignores gratuitous ARP).
func (p *pair) settle() {
	deadline := time.Now().Add(30 * time.Second)
	stableSince := time.Time{}
	for time.Now().Before(deadline) {
		ok := slices.Equal(p.holders(), []string{"dir-a"}) && p.probes.recentOK('a', 50*time.Millisecond)
		switch {
		case !ok:
			stableSince = time.Time{}
		case stableSince.IsZero():
			stableSince = time.Now()
		case time.Since(stableSince) > 1500*time.Millisecond:
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.b.tb.Fatalf("%s: did not settle with dir-a owning the VIP (holders %v)%s", p.system, p.holders(), p.logs())
}

// run measures trials of one scenario.
func (b *bench) run(system, scenario string, trials int) []time.Duration {
	p := b.newPair(system)
	var out []time.Duration
	for i := 0; i < trials; i++ {
		p.settle()
		time.Sleep(time.Duration(mrand.Int64N(int64(time.Second)))) // random phase
		t0 := time.Now()
		switch scenario {
		case "link-down":
			p.hosts["dir-a"].LinkDown()
		case "graceful":
			if err := p.procs["dir-a"].Signal(syscall.SIGTERM); err != nil {
				b.tb.Fatalf("%v", err)
			}
		}
		d, ok := p.probes.firstOKAfter(t0, 'b', 15*time.Second)
		if !ok {
			b.tb.Fatalf("%s %s trial %d: the client never reached the VIP again (holders %v)%s", system, scenario, i, p.holders(), p.logs())
		}
		fmt.Printf("%-5s %-9s trial %2d: %7.1f ms\n", system, scenario, i+1, ms(d))
		out = append(out, d)
		switch scenario {
		case "link-down":
			p.hosts["dir-a"].LinkUp()
		case "graceful":
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			p.procs["dir-a"].Wait(ctx)
			cancel()
			p.start("dir-a")
		}
	}
	return out
}

// stability runs an lvsd pair under a CPU hog and counts ownership changes:
// on the interfaces (polled every 50 ms) and in lvsd's own logs ("VIP group
// transition", "peer dead").
func (b *bench) stability(d time.Duration) {
	p := b.newPair("lvsd")
	p.settle()
	self, _ := os.Executable()
	hog := exec.Command(self, "-hog")
	if err := hog.Start(); err != nil {
		b.tb.Fatalf("starting the CPU hog: %v", err)
	}
	b.tb.Cleanup(func() { hog.Process.Kill(); hog.Wait() })
	rt := "lvsd's default"
	switch {
	case b.realtime < 0:
		rt = "0 (off)"
	case b.realtime > 0:
		rt = fmt.Sprint(b.realtime)
	}
	fmt.Printf("stability: lvsd pair (heartbeat_interval 20ms, dead_after 100ms, realtime_priority %s) for %v, %d-thread CPU hog (pid %d)\n",
		rt, d, runtime.NumCPU(), hog.Process.Pid)
	const transition, dead = `msg="VIP group transition"`, `msg="peer dead"`
	before := map[string]int{}
	for n, pr := range p.procs {
		before[n] = len(strings.Split(pr.Output(), "\n")) - 1 // complete lines so far
	}
	changes, last := 0, p.holders()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		time.Sleep(50 * time.Millisecond)
		if h := p.holders(); !slices.Equal(h, last) {
			changes++
			fmt.Printf("  %s holders %v -> %v\n", time.Now().Format("15:04:05.000"), last, h)
			last = h
		}
	}
	transitions, deaths := 0, 0
	for _, n := range []string{"dir-a", "dir-b"} {
		lines := strings.Split(p.procs[n].Output(), "\n")
		for _, line := range lines[before[n]:] {
			t, dd := strings.Contains(line, transition), strings.Contains(line, dead)
			if t {
				transitions++
			}
			if dd {
				deaths++
			}
			if t || dd {
				fmt.Printf("  %s: %s\n", n, line)
			}
		}
	}
	lost, total := p.probes.failures(end.Add(-d), end)
	fmt.Printf("ownership changes seen on the interfaces: %d (target 0)\n", changes)
	fmt.Printf("VIP group transitions logged by lvsd: %d, peers declared dead: %d\n", transitions, deaths)
	fmt.Printf("client probes failed: %d of %d\n", lost, total)
}

// prober starts a TCP connect from the client every 10 ms (100 ms timeout)
// and records each one.
type prober struct {
	mu     sync.Mutex
	probes []probe
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type probe struct {
	start, end time.Time
	ok         bool
	who        byte // 'a' or 'b': the director that answered
}

func newProber(h *topo.Host, addr string) *prober {
	ctx, cancel := context.WithCancel(context.Background())
	p := &prober{cancel: cancel}
	p.wg.Go(func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			p.wg.Go(func() {
				start := time.Now()
				dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				c, err := h.Dial(dctx, "tcp", addr)
				cancel()
				var who [1]byte
				if err == nil {
					c.SetDeadline(start.Add(100 * time.Millisecond))
					_, err = c.Read(who[:])
					c.Close()
				}
				end := time.Now()
				p.mu.Lock()
				p.probes = append(p.probes, probe{start, end, err == nil, who[0]})
				if len(p.probes) > 200000 {
					p.probes = p.probes[100000:]
				}
				p.mu.Unlock()
			})
		}
	})
	return p
}

func (p *prober) stop() { p.cancel(); p.wg.Wait() }

// firstOKAfter waits for the first successful probe started after t0 that
// the new owner (who) answered, and returns its end minus t0. (On a graceful
// stop the old owner may still answer the first probes.)
func (p *prober) firstOKAfter(t0 time.Time, who byte, within time.Duration) (time.Duration, bool) {
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		p.mu.Lock()
		var best time.Time
		for _, pr := range p.probes {
			if pr.ok && pr.who == who && !pr.start.Before(t0) && (best.IsZero() || pr.end.Before(best)) {
				best = pr.end
			}
		}
		p.mu.Unlock()
		// Let probes started a little earlier finish before trusting "first".
		if !best.IsZero() && time.Since(best) > 150*time.Millisecond {
			return best.Sub(t0), true
		}
	}
	return 0, false
}

// recentOK reports whether every probe that ended in the last period was
// answered by who (and there was one).
func (p *prober) recentOK(who byte, period time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for i := len(p.probes) - 1; i >= 0 && time.Since(p.probes[i].end) < period; i-- {
		if !p.probes[i].ok || p.probes[i].who != who {
			return false
		}
		n++
	}
	return n > 0
}

func (p *prober) failures(from, to time.Time) (failed, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range p.probes {
		if pr.start.After(from) && pr.start.Before(to) {
			total++
			if !pr.ok {
				failed++
			}
		}
	}
	return
}

// burn saturates every CPU until killed (the stability run's hog).
func burn() {
	for i := 0; i < runtime.NumCPU(); i++ {
		go func() {
			x := uint64(1)
			for {
				x = x*6364136223846793005 + 1442695040888963407
			}
		}()
	}
	select {}
}

// installKeepalived installs the Debian package unless it is already there.
func installKeepalived() {
	if _, err := exec.LookPath("keepalived"); err == nil {
		return
	}
	log.Printf("installing keepalived with apt-get")
	for _, args := range [][]string{{"update"}, {"install", "-y", "keepalived"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			log.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func mustTempDir() string {
	d, err := os.MkdirTemp("", "lvsd-failover-")
	if err != nil {
		log.Fatal(err)
	}
	return d
}

// tb is the minimal testing.TB that lab/topo needs, for a command.
type tb struct {
	mu       sync.Mutex
	cleanups []func()
}

func newTB() *tb { return &tb{} }

func (t *tb) Helper()                   {}
func (t *tb) Logf(f string, a ...any)   { log.Printf(f, a...) }
func (t *tb) Cleanup(f func())          { t.mu.Lock(); t.cleanups = append(t.cleanups, f); t.mu.Unlock() }
func (t *tb) Fatalf(f string, a ...any) { log.Printf("FATAL: "+f, a...); t.cleanup(); os.Exit(1) }
func (t *tb) cleanup() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
