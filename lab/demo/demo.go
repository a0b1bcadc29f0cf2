// Package demo is the lab's live demo, run inside the VM by `lvslab demo`
// (`make demo`): two lvsd directors in one cluster share a VIP in front of
// two direct-routing real servers, and clients use it. It prints, step by
// step, what a newcomer wants to see: `lvsctl status` on both directors,
// the kernel's table (`ipvsadm -Ln`), clients landing on their sticky real
// server, a drain issued on the standby and applied on the owner,
// `lvsctl failover` moving the VIP while clients keep their real servers
// (connection sync carries the persistence templates), and `lvsctl events`.
package demo

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/ctl"
	"github.com/lvsd/lvsd/lab/topo"
)

// Addresses of the demo topology: one subnet on one bridge.
const (
	VIP     = "198.18.0.100"
	rs1Addr = "198.18.0.21"
	rs2Addr = "198.18.0.22"
)

// Options tune the demo.
type Options struct {
	// LVSD is the command that runs lvsd (its arguments follow), e.g.
	// {"/usr/sbin/lvsd"} or a binary that re-executes itself as lvsd.
	LVSD []string
	// Requests is how many new connections each client opens; default 3.
	Requests int
}

// Run builds the topology, starts both directors, walks through the story
// and tears everything down. It must run inside the lab VM (the host kernel
// has no IPVS).
func Run(ctx context.Context, w io.Writer, o Options) (err error) {
	if len(o.LVSD) == 0 {
		return errors.New("demo: no lvsd command given")
	}
	if o.Requests <= 0 {
		o.Requests = 3
	}
	e := &env{}
	defer e.close()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = errors.New(string(f))
		}
	}()
	d := &demo{ctx: ctx, w: w, o: o, env: e}
	defer func() {
		if err != nil {
			d.dumpLogs()
		}
	}()
	return d.run()
}

type demo struct {
	ctx             context.Context
	w               io.Writer
	o               Options
	env             *env
	dir             string
	client, client2 *topo.Host
	dirs            [2]*director
}

// director is one lvsd with its namespace.
type director struct {
	name, addr string
	prio       int
	host       *topo.Host
	dir        string
	proc       *topo.Proc
	api        *api.Client
}

func (r *director) socket() string { return filepath.Join(r.dir, "lvsd.sock") }

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.w, format+"\n", args...) }

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.w, "\n== "+format+"\n", args...)
}

// indent prints command output indented under its command line.
func (d *demo) indent(out string) {
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Fprintf(d.w, "    %s\n", line)
	}
}

// lvsctl runs lvsctl against r's lvsd, printing the command and its output.
func (d *demo) lvsctl(r *director, args ...string) error {
	fmt.Fprintf(d.w, "\n  %s$ lvsctl %s\n", r.name, strings.Join(args, " "))
	var out strings.Builder
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	code := ctl.Main(ctx, append([]string{"--socket", r.socket()}, args...), &out, &out)
	d.indent(out.String())
	if code != 0 {
		return fmt.Errorf("lvsctl %s on %s: exit %d", strings.Join(args, " "), r.name, code)
	}
	return nil
}

// ipvsadm runs ipvsadm -Ln (plus args) in r's namespace and prints it.
func (d *demo) ipvsadm(r *director, args ...string) error {
	args = append([]string{"-Ln"}, args...)
	fmt.Fprintf(d.w, "\n  %s$ ipvsadm %s\n", r.name, strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	out, err := r.host.Run(ctx, "ipvsadm", args...)
	if err != nil {
		return err
	}
	d.indent(out)
	return nil
}

// wait polls cond every 20 ms for up to limit.
func (d *demo) wait(limit time.Duration, what string, cond func() bool) (time.Duration, error) {
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			return 0, fmt.Errorf("timed out after %v waiting for %s", limit, what)
		}
		if d.ctx.Err() != nil {
			return 0, d.ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start), nil
}

func (d *demo) state(r *director) string {
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	st, err := r.api.Status(ctx)
	if err != nil || len(st.Groups) == 0 {
		return ""
	}
	return st.Groups[0].State
}

// owner waits until r owns the group and its peer is backup.
func (d *demo) owner(r *director) (time.Duration, error) {
	peer := d.dirs[0]
	if r == d.dirs[0] {
		peer = d.dirs[1]
	}
	return d.wait(30*time.Second, r.name+" owning the VIP", func() bool {
		return d.state(r) == "master" && d.state(peer) == "backup"
	})
}

// who opens a new connection from src (on h) to the VIP's HTTP port and
// returns the real server that answered.
func (d *demo) who(h *topo.Host, src string) (string, error) {
	ctx, cancel := context.WithTimeout(d.ctx, 15*time.Second)
	defer cancel()
	var c net.Conn
	if err := h.Do(func() error {
		dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		var err error
		c, err = dl.DialContext(ctx, "tcp", VIP+":80")
		return err
	}); err != nil {
		return "", fmt.Errorf("%s -> %s:80: %w", src, VIP, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", VIP)
	body, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("%s -> %s:80: read: %w", src, VIP, err)
	}
	_, name, _ := strings.Cut(string(body), "\r\n\r\n")
	return strings.TrimSpace(name), nil
}

// requests prints where n new connections of a client land and fails
// unless they all land on one real server, which it returns.
func (d *demo) requests(label string, h *topo.Host, src string, n int) (string, error) {
	var got []string
	for i := 0; i < n; i++ {
		s, err := d.who(h, src)
		if err != nil {
			return "", err
		}
		got = append(got, s)
	}
	d.say("  %-34s -> %s", fmt.Sprintf("%s (%s)", label, src), strings.Join(got, " "))
	for _, g := range got {
		if g != got[0] {
			return "", fmt.Errorf("%s was not kept on one real server: %v", src, got)
		}
	}
	return got[0], nil
}

func (d *demo) run() error {
	d.step("lvsd demo: two directors share a VIP in front of two real servers (lab VM, real IPVS)")
	tmp, err := os.MkdirTemp("", "lvsd-demo-")
	if err != nil {
		return err
	}
	d.dir = tmp
	d.env.Cleanup(func() { os.RemoveAll(tmp) })
	if err := d.topology(); err != nil {
		return err
	}
	if err := d.startDirectors(); err != nil {
		return err
	}
	a, b := d.dirs[0], d.dirs[1]

	d.step("lvsctl status on both directors: members, who owns the VIP group, the services as IPVS has them")
	if err := d.lvsctl(a, "status"); err != nil {
		return err
	}
	if err := d.lvsctl(b, "status"); err != nil {
		return err
	}
	d.step("the kernel's own view on the owner")
	if err := d.ipvsadm(a); err != nil {
		return err
	}

	d.step("clients open %d new connections each to http://%s/ (persistence: each stays on one real server)", d.o.Requests, VIP)
	c1, err := d.requests("client1", d.client, "198.18.0.10", d.o.Requests)
	if err != nil {
		return err
	}
	if _, err := d.requests("client1, 2nd address", d.client, "198.18.0.14", d.o.Requests); err != nil {
		return err
	}
	c2, err := d.requests("client2", d.client2, "198.18.0.13", d.o.Requests)
	if err != nil {
		return err
	}
	d.say("  (rr spreads new clients; the persistence template keeps each client on its server)")
	d.step("connection sync: the standby dir-b already holds the owner's persistence templates (the :0 entries)")
	if _, err := d.wait(20*time.Second, "templates synced to dir-b", func() bool { return d.synced(b, "198.18.0.10") }); err != nil {
		return err
	}
	if err := d.ipvsadm(b, "-c"); err != nil {
		return err
	}

	if err := d.drain(a, b, c1, c2); err != nil {
		return err
	}
	if err := d.failover(a, b, c1, c2); err != nil {
		return err
	}

	d.step("lvsctl events: what happened, on each director")
	if err := d.lvsctl(a, "events"); err != nil {
		return err
	}
	if err := d.lvsctl(b, "events"); err != nil {
		return err
	}
	d.step("done: a drain issued on the standby reached the owner, and the VIP moved without moving any client")
	return nil
}

func (d *demo) topology() error {
	d.step("building the topology: network namespaces on one bridge, all in 198.18.0.0/24")
	tp := topo.New(d.env)
	d.client = tp.Host("client1", "198.18.0.10/24")
	d.client.AddAddr("eth0", "198.18.0.14/24")
	d.client.AddAddr("eth0", "198.18.0.15/24")
	d.client2 = tp.Host("client2", "198.18.0.13/24")
	d.say("  client1  198.18.0.10, .14, .15 (three client addresses)")
	d.say("  client2  198.18.0.13")
	for i, x := range []struct {
		name, addr string
		prio       int
	}{{"dir-a", "198.18.0.11", 150}, {"dir-b", "198.18.0.12", 100}} {
		r := &director{name: x.name, addr: x.addr, prio: x.prio, dir: filepath.Join(d.dir, x.name)}
		r.host = tp.Host(x.name, x.addr+"/24")
		r.api = api.NewUnixClient(r.socket())
		d.dirs[i] = r
		d.say("  %-8s %s  lvsd, VIP group priority %d", x.name, x.addr, x.prio)
	}
	for _, rs := range []struct{ name, addr string }{{"rs1", rs1Addr}, {"rs2", rs2Addr}} {
		h := tp.Host(rs.name, rs.addr+"/24")
		h.AddLoopbackVIP(VIP)
		h.ServeHTTP(":80")
		h.ServeIdentify(":7") // echo, for a long-lived connection
		d.say("  %-8s %s  HTTP server answering with its name; VIP on lo (direct routing)", rs.name, rs.addr)
	}
	d.say("  VIP      %s  owned by one director at a time", VIP)
	return nil
}

const configTemplate = `[node]
name = %q
interface = "eth0"
state_dir = %q

[control]
socket = %q

[cluster]
bind = "%s:7946"
peers = ["%s:7946"]
key_file = %q             # gossip and heartbeats are encrypted
heartbeat_interval = "100ms"
dead_after = "2s"              # generous: the lab VM shares a busy host

[ipvs.sync]                  # kernel connection sync: templates follow the VIP
enabled = true
interface = "eth0"
sync_id = 1

[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]
priority = %d

[[service]]
name = "web"
group = "web"
address = "198.18.0.100"
port = 0                     # every port of the VIP (persistent port 0)
scheduler = "rr"
persistence = "300s"
forward = "dr"
  [service.check]
  type = "tcp"
  port = 80
  interval = "2s"
  timeout = "1500ms"
  [[service.backend]]
  address = "198.18.0.21"
  [[service.backend]]
  address = "198.18.0.22"
`

func (d *demo) startDirectors() error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	keyFile := filepath.Join(d.dir, "gossip.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return err
	}
	for i, r := range d.dirs {
		peer := d.dirs[1-i]
		if err := os.MkdirAll(r.dir, 0o700); err != nil {
			return err
		}
		cfg := fmt.Sprintf(configTemplate, r.name, filepath.Join(r.dir, "state"), r.socket(), r.addr, peer.addr, keyFile, r.prio)
		path := filepath.Join(r.dir, "lvsd.toml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			return err
		}
		if i == 0 {
			d.step("dir-a's config (dir-b's differs in name, addresses and priority 100)")
			d.indent(cfg)
		}
	}
	d.step("starting lvsd on dir-a and dir-b")
	for _, r := range d.dirs {
		args := append(append([]string{}, d.o.LVSD[1:]...), "--config", filepath.Join(r.dir, "lvsd.toml"))
		r.proc = r.host.Start(d.o.LVSD[0], args...)
		if _, err := d.wait(30*time.Second, "lvsd on "+r.name+" answering", func() bool {
			if r.proc.Exited() {
				return true
			}
			ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
			defer cancel()
			_, err := r.api.Status(ctx)
			return err == nil
		}); err != nil {
			return err
		}
		if r.proc.Exited() {
			return fmt.Errorf("lvsd on %s exited at start", r.name)
		}
		d.say("  lvsd on %s is up (pid %d)", r.name, r.proc.PID())
	}
	took, err := d.owner(d.dirs[0])
	if err != nil {
		return err
	}
	d.say("  the directors elected dir-a (priority 150) owner of the VIP group in %v; dir-b is its standby", took.Round(time.Millisecond))
	return nil
}

// synced reports whether r's IPVS holds a persistence template of src.
func (d *demo) synced(r *director, src string) bool {
	ctx, cancel := context.WithTimeout(d.ctx, 20*time.Second)
	defer cancel()
	out, err := r.host.Run(ctx, "ipvsadm", "-Lnc")
	return err == nil && strings.Contains(out, src+":0")
}

// drain drains client2's real server on the standby, times its arrival in
// the owner's IPVS, shows a long-lived connection to it still working and
// a new client avoiding it, then undrains it on the owner.
func (d *demo) drain(a, b *director, c1, c2 string) error {
	addr := map[string]string{"rs1": rs1Addr, "rs2": rs2Addr}[c2]
	d.step("maintenance: drain %s (client2's server) with a command on the STANDBY dir-b", c2)
	held, err := d.hold(d.client2, c2)
	if err != nil {
		return err
	}
	defer held.Close()
	d.say("  client2 holds a long-lived echo connection (port 7) to %s", c2)
	probe, err := ipvs.New(a.host.NetnsPath())
	if err != nil {
		return fmt.Errorf("netlink IPVS handle in dir-a: %w", err)
	}
	defer probe.Close()
	start := time.Now()
	if err := d.lvsctl(b, "backend", "drain", "web", addr); err != nil {
		return err
	}
	if _, err := d.wait(30*time.Second, "the drain reaching dir-a", func() bool { return weight(probe, addr) == 0 }); err != nil {
		return err
	}
	took := time.Since(start)
	d.say("\n  the owner dir-a applied it %v after the command (replicated through the cluster gossip):", took.Round(time.Millisecond))
	if err := d.ipvsadm(a); err != nil {
		return err
	}
	d.say("")
	if err := held.echo("still here after the drain"); err != nil {
		return fmt.Errorf("long-lived connection to the drained %s: %w", c2, err)
	}
	d.say("  client2's long-lived connection to %s still works (weight 0 keeps existing connections)", c2)
	fresh, err := d.requests("new client", d.client, "198.18.0.15", 2)
	if err != nil {
		return err
	}
	if fresh == c2 {
		return fmt.Errorf("a new client reached the drained %s", c2)
	}
	d.say("  a new client avoids the drained %s", c2)
	if err := d.lvsctl(a, "backend", "undrain", "web", addr); err != nil {
		return err
	}
	if _, err := d.wait(30*time.Second, "the undrain reaching dir-b", func() bool {
		ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
		defer cancel()
		st, err := b.api.Status(ctx)
		if err != nil || len(st.Services) == 0 {
			return false
		}
		for _, be := range st.Services[0].Backends {
			if be.Address == addr+":0" {
				return be.Weight == 1
			}
		}
		return false
	}); err != nil {
		return err
	}
	d.say("  undrained on the owner dir-a; dir-b has it too: either director can be used")
	return nil
}

// failover moves the VIP with lvsctl failover and shows clients staying.
func (d *demo) failover(a, b *director, c1, c2 string) error {
	d.step("before patching dir-a: move the VIP to dir-b")
	start := time.Now()
	if err := d.lvsctl(a, "failover", "web"); err != nil {
		return err
	}
	if _, err := d.owner(b); err != nil {
		return err
	}
	d.say("\n  dir-b owns the VIP %v after the command; it announced it with gratuitous ARP:", time.Since(start).Round(time.Millisecond))
	mac := b.host.MAC("").String()
	if _, err := d.wait(10*time.Second, "client1's ARP entry for the VIP pointing to dir-b", func() bool {
		m, ok := d.client.Neighbor(VIP)
		return !ok || m.String() == mac
	}); err != nil {
		return err
	}
	d.say("  client1 now reaches %s at dir-b's MAC %s", VIP, mac)
	d.say("\n  the same clients, now through dir-b:")
	for _, x := range []struct {
		label, src, want string
		h                *topo.Host
	}{{"client1", "198.18.0.10", c1, d.client}, {"client2", "198.18.0.13", c2, d.client2}} {
		got, err := d.requests(x.label, x.h, x.src, d.o.Requests)
		if err != nil {
			return err
		}
		if got != x.want {
			return fmt.Errorf("%s moved from %s to %s across the failover", x.label, x.want, got)
		}
	}
	d.say("  nobody moved: dir-b had the persistence templates from connection sync")
	if err := d.lvsctl(b, "status"); err != nil {
		return err
	}
	d.say("\n  dir-a stays backup until told otherwise (failover pins it low, across restarts too): `lvsctl clear web` on dir-a gives it back")
	return nil
}

// echoConn is a long-lived connection to an identify/echo server.
type echoConn struct {
	net.Conn
	r *bufio.Reader
}

func (d *demo) hold(h *topo.Host, want string) (*echoConn, error) {
	ctx, cancel := context.WithTimeout(d.ctx, 15*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, "tcp", VIP+":7")
	if err != nil {
		return nil, err
	}
	ec := &echoConn{Conn: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	name, err := ec.r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, err
	}
	if got := strings.TrimSpace(name); got != want {
		c.Close()
		return nil, fmt.Errorf("client2's echo connection reached %s, not its server %s", got, want)
	}
	return ec, ec.echo("hello")
}

func (c *echoConn) echo(msg string) error {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != msg {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}

// weight reads addr's weight in the VIP's port-0 service over netlink
// (-1: absent or unreadable).
func weight(h *ipvs.Handle, addr string) int {
	svc := &ipvs.Service{AddressFamily: unix.AF_INET, Protocol: unix.IPPROTO_TCP, Address: net.ParseIP(VIP).To4()}
	dests, err := h.GetDestinations(svc)
	if err != nil {
		return -1
	}
	for _, dst := range dests {
		if dst.Address.Equal(net.ParseIP(addr)) {
			return dst.Weight
		}
	}
	return -1
}

// dumpLogs prints the tail of each lvsd's log after a failure.
func (d *demo) dumpLogs() {
	for _, r := range d.dirs {
		if r == nil || r.proc == nil {
			continue
		}
		out := r.proc.Output()
		if lines := strings.Split(out, "\n"); len(lines) > 40 {
			out = strings.Join(lines[len(lines)-40:], "\n")
		}
		fmt.Fprintf(d.w, "\n== lvsd log of %s (last lines)\n", r.name)
		d.indent(out)
	}
}

// env lets the demo use topo outside a test: Fatalf aborts the demo and
// cleanups run when it ends.
type env struct{ cleanups []func() }

type fatal string

func (e *env) Helper()                           {}
func (e *env) Fatalf(format string, args ...any) { panic(fatal(fmt.Sprintf(format, args...))) }
func (e *env) Logf(format string, args ...any)   {}
func (e *env) Cleanup(fn func())                 { e.cleanups = append(e.cleanups, fn) }

func (e *env) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	e.cleanups = nil
}
