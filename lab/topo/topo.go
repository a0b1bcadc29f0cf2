package topo

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TB is the part of testing.TB that topo uses; *testing.T and *testing.B
// satisfy it, and so can a program (such as the lab demo) that is not a test.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
}

// Topo is one switch and the hosts attached to it.
type Topo struct {
	t      TB
	prefix string
	sw     netns.NsHandle
	swNL   *netlink.Handle
	bridge netlink.Link

	mu      sync.Mutex
	hosts   map[string]*Host
	order   []*Host
	procs   []*Proc
	closers []func()
	nports  int
	closed  bool
}

const bridgeName = "br0"

// topoSeq numbers topologies within the process, for unique prefixes.
var topoSeq atomic.Int64

// New creates a topology with its switch and registers its cleanup with t
// and with the process's SIGINT/SIGTERM handler.
func New(t TB) *Topo {
	t.Helper()
	Sweep() // best effort: leftovers of dead runs
	tp := &Topo{
		t:      t,
		prefix: fmt.Sprintf("lvt%dx%d", os.Getpid(), topoSeq.Add(1)),
		hosts:  map[string]*Host{},
	}
	register(tp)
	t.Cleanup(func() {
		if err := tp.Close(); err != nil {
			t.Logf("topo cleanup: %v", err)
		}
	})
	if err := tp.makeSwitch(); err != nil {
		t.Fatalf("topo: create switch: %v", err)
	}
	return tp
}

// Prefix is the unique prefix of this topology's namespace names.
func (tp *Topo) Prefix() string { return tp.prefix }

func (tp *Topo) nsName(name string) string { return tp.prefix + "-" + name }

func (tp *Topo) makeSwitch() error {
	name := tp.nsName("sw")
	h, err := newNamedNS(name)
	if err != nil {
		return err
	}
	tp.mu.Lock()
	tp.sw = h
	tp.mu.Unlock()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	tp.swNL = nl
	// No IPv6 on the switch's own ports: they should forward, not talk.
	if err := withNS(h, func() error {
		return writeSysctl("net.ipv6.conf.default.disable_ipv6", "1")
	}); err != nil {
		return err
	}
	off := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}, MulticastSnooping: &off}
	if err := nl.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge in %s: %w", name, err)
	}
	link, err := nl.LinkByName(bridgeName)
	if err != nil {
		return fmt.Errorf("find bridge in %s: %w", name, err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set bridge up in %s: %w", name, err)
	}
	tp.bridge = link
	return nil
}

var hostNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// Host creates a host: a namespace with lo up and eth0 joined to the switch,
// holding addrs (CIDR, in the test networks).
func (tp *Topo) Host(name string, addrs ...string) *Host {
	tp.t.Helper()
	h, err := tp.addHost(name, addrs)
	if err != nil {
		tp.t.Fatalf("topo: host %q: %v", name, err)
	}
	return h
}

func (tp *Topo) addHost(name string, addrs []string) (*Host, error) {
	if !hostNameRE.MatchString(name) || name == "sw" {
		return nil, fmt.Errorf("bad name: want 1-32 of [a-z0-9-] starting with a letter, not \"sw\"")
	}
	prefixes, err := parseTestPrefixes(addrs)
	if err != nil {
		return nil, err
	}
	tp.mu.Lock()
	if tp.closed {
		tp.mu.Unlock()
		return nil, errors.New("topology already cleaned up")
	}
	if tp.hosts[name] != nil {
		tp.mu.Unlock()
		return nil, errors.New("a host of that name exists")
	}
	h := &Host{topo: tp, name: name, ns: netns.None()}
	tp.hosts[name] = h
	tp.order = append(tp.order, h)
	tp.mu.Unlock()

	nsh, err := newNamedNS(tp.nsName(name))
	if err != nil {
		return nil, err
	}
	h.ns = nsh
	if h.nl, err = netlink.NewHandleAt(nsh); err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	// Before any interface exists, so that eth0 inherits "default".
	if err := h.Do(func() error {
		for _, kv := range [][2]string{
			{"net.ipv6.conf.default.accept_dad", "0"},
			{"net.ipv6.conf.all.accept_dad", "0"},
		} {
			if err := writeSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	lo, err := h.nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	if err := h.nl.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("set lo up: %w", err)
	}
	if err := h.attach("eth0", prefixes); err != nil {
		return nil, err
	}
	return h, nil
}

// attach adds a veth pair: ifname inside h, a port on the bridge outside.
func (h *Host) attach(ifname string, prefixes []netip.Prefix) error {
	tp := h.topo
	tp.mu.Lock()
	tp.nports++
	port := "p" + strconv.Itoa(tp.nports)
	tp.mu.Unlock()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MasterIndex: tp.bridge.Attrs().Index},
		PeerName:      ifname,
		PeerNamespace: netlink.NsFd(int(h.ns)),
	}
	if err := tp.swNL.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s<->%s: %w", port, ifname, err)
	}
	pl, err := tp.swNL.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find port %s: %w", port, err)
	}
	if err := tp.swNL.LinkSetUp(pl); err != nil {
		return fmt.Errorf("set port %s up: %w", port, err)
	}
	link, err := h.nl.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find %s: %w", ifname, err)
	}
	for _, p := range prefixes {
		if err := h.addAddr(link, p); err != nil {
			return err
		}
	}
	if err := h.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", ifname, err)
	}
	if err := waitOperUp(h.nl, ifname); err != nil {
		return err
	}
	if err := waitOperUp(tp.swNL, port); err != nil {
		return err
	}
	h.mu.Lock()
	if h.ports == nil {
		h.ports = map[string]string{}
	}
	h.ports[ifname] = port
	h.mu.Unlock()
	return nil
}

// waitOperUp waits until a link is operationally up. The kernel turns
// carrier changes into "up" asynchronously (linkwatch, up to a second
// later), and until then the device drops what it is given; returning
// before that makes the first packets of a test vanish.
func waitOperUp(nl *netlink.Handle, name string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("wait for %s to come up: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still %s after 5s", name, l.Attrs().OperState)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testNets are the only networks topologies may use.
var testNets = []netip.Prefix{
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// parseTestPrefixes parses CIDR addresses and refuses anything outside the
// test networks.
func parseTestPrefixes(addrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, a := range addrs {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return nil, fmt.Errorf("address %d %q: want CIDR such as 198.18.0.10/24: %w", i+1, a, err)
		}
		if !inTestNets(p.Addr()) {
			return nil, fmt.Errorf("address %d %q: outside the test networks 198.18.0.0/15 and 2001:db8::/32", i+1, a)
		}
		out = append(out, p)
	}
	return out, nil
}

func inTestNets(a netip.Addr) bool {
	for _, n := range testNets {
		if n.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// Close kills the topology's processes, closes its servers and deletes its
// namespaces. It is idempotent; t.Cleanup and the signal handler call it.
func (tp *Topo) Close() error {
	tp.mu.Lock()
	if tp.closed {
		tp.mu.Unlock()
		return nil
	}
	tp.closed = true
	procs, closers, hosts := tp.procs, tp.closers, tp.order
	tp.mu.Unlock()
	defer unregister(tp)

	var errs []error
	for _, p := range procs {
		p.stop()
	}
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	for _, h := range hosts {
		if h.nl != nil {
			h.nl.Close()
		}
		if h.ns.IsOpen() {
			h.ns.Close()
		}
		if err := deleteNamedNS(tp.nsName(h.name)); err != nil {
			errs = append(errs, err)
		}
	}
	if tp.swNL != nil {
		tp.swNL.Close()
	}
	if tp.sw.IsOpen() {
		tp.sw.Close()
	}
	if err := deleteNamedNS(tp.nsName("sw")); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// addCloser registers fn to run at cleanup, before namespaces go.
func (tp *Topo) addCloser(fn func()) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.closers = append(tp.closers, fn)
}

// Live topologies of this process, for the signal handler. This is the one
// piece of package state: a signal is process-wide, so its handler must be.
var live struct {
	sync.Mutex
	m    map[*Topo]bool
	once sync.Once
}

func register(tp *Topo) {
	live.Lock()
	if live.m == nil {
		live.m = map[*Topo]bool{}
	}
	live.m[tp] = true
	live.Unlock()
	live.once.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			sig := <-ch
			live.Lock()
			all := make([]*Topo, 0, len(live.m))
			for tp := range live.m {
				all = append(all, tp)
			}
			live.Unlock()
			for _, tp := range all {
				if err := tp.Close(); err != nil {
					fmt.Fprintf(os.Stderr, "topo: cleanup on %v: %v\n", sig, err)
				}
			}
			// Die of the signal, as the process would have without us.
			signal.Reset(sig)
			syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		}()
	})
}

func unregister(tp *Topo) {
	live.Lock()
	delete(live.m, tp)
	live.Unlock()
}

// Sweep removes namespaces left by topologies of processes that are gone
// (names lvt<pid>x...), and returns their names. Namespaces of live
// processes are never touched.
func Sweep() []string {
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range ents {
		pid, ok := prefixPID(e.Name())
		if !ok || pidAlive(pid) {
			continue
		}
		if deleteNamedNS(e.Name()) == nil {
			removed = append(removed, filepath.Join(netnsDir, e.Name()))
		}
	}
	return removed
}

// prefixPID extracts pid from "lvt<pid>x<n>-<name>".
func prefixPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "lvt")
	if !ok {
		return 0, false
	}
	p, after, ok := strings.Cut(rest, "x")
	if !ok || !strings.Contains(after, "-") {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	return pid, err == nil && pid > 0
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// writeSysctl writes a sysctl of the calling thread's network namespace
// (call it inside Do for a host's).
func writeSysctl(key, value string) error {
	if key == "" || strings.Contains(key, "..") || strings.HasPrefix(key, "/") {
		return fmt.Errorf("sysctl key %q: want a dotted name such as net.ipv4.ip_forward (or slash-separated)", key)
	}
	// Slash form ("net/ipv4/conf/eth0.100/rp_filter") allows dots in names.
	rel := key
	if !strings.Contains(key, "/") {
		rel = strings.ReplaceAll(key, ".", "/")
	}
	p := filepath.Join("/proc/sys", rel)
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}
