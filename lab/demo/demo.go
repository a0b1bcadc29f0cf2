// Package demo is the lab's live demo, run inside the VM by `lvslab demo`:
// two clients reach two real servers through a persistent IPVS NAT service
// on a director, and it prints the IPVS table and who answered each
// request. Until lvsd exists the service is programmed here through
// moby/ipvs; the director issues replace that step with lvsd.
package demo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/lvsd/lvsd/lab/topo"
)

// Addresses of the demo topology.
const (
	VIP      = "198.18.1.100"
	dirLAN   = "198.18.0.1"
	dirRSNet = "198.18.2.1"
)

// Options tune the demo.
type Options struct {
	Requests int // per client; default 5
}

// Run builds the topology, programs the service, drives the clients and
// tears everything down. It must run inside the lab VM (the host kernel has
// no IPVS).
func Run(ctx context.Context, w io.Writer, o Options) (err error) {
	if o.Requests <= 0 {
		o.Requests = 5
	}
	env := &env{}
	defer env.close()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = errors.New(string(f))
		}
	}()
	return run(ctx, w, o, env)
}

func run(ctx context.Context, w io.Writer, o Options, e *env) error {
	say := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	say("== building the topology (namespaces on one bridge)")
	tp := topo.New(e)
	dir := tp.Host("dir", dirLAN+"/24", dirRSNet+"/24")
	dir.Sysctl("net.ipv4.ip_forward", "1")
	dir.Sysctl("net.ipv4.conf.all.send_redirects", "0")
	dir.Sysctl("net.ipv4.conf.eth0.send_redirects", "0")
	dir.AddAddr("lo", VIP+"/32")
	var clients []*topo.Host
	for i, addr := range []string{"198.18.0.10", "198.18.0.11"} {
		c := tp.Host(fmt.Sprintf("client%d", i+1), addr+"/24")
		c.AddRoute("198.18.1.0/24", dirLAN)
		clients = append(clients, c)
		say("   %-8s %s (route to %s via the director)", c.Name(), addr, VIP)
	}
	var rss []string
	for i, addr := range []string{"198.18.2.11", "198.18.2.12"} {
		rs := tp.Host(fmt.Sprintf("rs%d", i+1), addr+"/24")
		rs.AddRoute("default", dirRSNet)
		rs.ServeHTTP(":80")
		rss = append(rss, addr)
		say("   %-8s %s (HTTP server answering with its name)", rs.Name(), addr)
	}
	say("   %-8s %s, %s, VIP %s on lo", "dir", dirLAN, dirRSNet, VIP)

	say("== programming a persistent IPVS service on the director")
	ih, err := ipvs.New(dir.NetnsPath())
	if err != nil {
		return fmt.Errorf("open IPVS in the director's namespace: %w", err)
	}
	defer ih.Close()
	mask := binary.NativeEndian.Uint32(net.CIDRMask(32, 32)) // kernel reads it big-endian
	svc := &ipvs.Service{
		AddressFamily: unix.AF_INET, Protocol: unix.IPPROTO_TCP, Address: net.ParseIP(VIP).To4(), Port: 80,
		SchedName: "rr", Flags: 0x1 /* persistent */, Timeout: 300, Netmask: mask,
	}
	if err := ih.NewService(svc); err != nil {
		return fmt.Errorf("add service %s:80: %w", VIP, err)
	}
	for _, rs := range rss {
		d := &ipvs.Destination{Address: net.ParseIP(rs).To4(), Port: 80, Weight: 1,
			ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: unix.AF_INET}
		if err := ih.NewDestination(svc, d); err != nil {
			return fmt.Errorf("add destination %s: %w", rs, err)
		}
	}
	out, err := dir.Run(ctx, "ipvsadm", "-Ln")
	if err != nil {
		return err
	}
	say("$ ipvsadm -Ln\n%s", strings.TrimRight(out, "\n"))

	say("== each client opens %d new connections to http://%s/", o.Requests, VIP)
	for _, c := range clients {
		var got []string
		for i := 0; i < o.Requests; i++ {
			who, err := c.HTTPGet(ctx, "http://"+VIP+"/")
			if err != nil {
				return err
			}
			say("   %s request %d -> answered by %s", c.Name(), i+1, who)
			got = append(got, who)
		}
		for _, g := range got {
			if g != got[0] {
				return fmt.Errorf("%s was not kept on one real server: %v", c.Name(), got)
			}
		}
	}
	out, err = dir.Run(ctx, "ipvsadm", "-Lnc")
	if err != nil {
		return err
	}
	say("$ ipvsadm -Lnc   (connections; the 0 port entries are persistence templates)\n%s", strings.TrimRight(out, "\n"))
	say("== done: every client stayed on its real server")
	return nil
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
