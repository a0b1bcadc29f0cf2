//go:build lab

package director_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/ipvsdp"
	"github.com/lvsd/lvsd/lab/topo"
	"github.com/lvsd/lvsd/lab/vm"
)

// TestReconcilerOnTheKernel runs the reconciler against real IPVS through
// ipvsdp: the seed's table as ipvsadm shows it, zero writes when in sync
// (also after a restart's adoption and a resync, which proves the kernel's
// read-back compares equal to what was written), repair after `ipvsadm -C`
// and after a hand edit, an in-place forwarding change, and a foreign
// service left alone throughout.
func TestReconcilerOnTheKernel(t *testing.T) {
	if !vm.InVM() {
		t.Skip("needs the lab VM (IPVS): go run ./cmd/lvslab test ./director")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	tp := topo.New(t)
	dir := tp.Host("dir", "198.18.0.1/24", "2001:db8::1/64")
	ipvsadm := func(args ...string) string {
		t.Helper()
		out, err := dir.Run(ctx, "ipvsadm", args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	open := func() *director.Reconciler {
		t.Helper()
		dp, err := ipvsdp.Open(ctx, ipvsdp.WithNetNS(dir.NetnsPath()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dp.Close() })
		rec, _ := newReconciler(t, dp)
		return rec
	}
	// Someone else's service (kube-proxy, a script): never touched.
	ipvsadm("-A", "-t", "198.18.9.1:443", "-s", "lc")
	ipvsadm("-a", "-t", "198.18.9.1:443", "-r", "198.18.9.2:443", "-m", "-w", "5")
	foreign := regexp.MustCompile(`TCP\s+198\.18\.9\.1:443 lc\s+->\s+198\.18\.9\.2:443\s+Masq\s+5`)

	set := seedSet()
	r := open()
	res, err := r.Adopt(ctx, set, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops[director.OpAddService] != 5 || res.Ops[director.OpAddDest] != 9 {
		t.Fatalf("initial programming %v", res.Ops)
	}
	out := ipvsadm("-Ln")
	for _, want := range []string{
		`TCP\s+198\.18\.1\.63:0 rr persistent 500\s+->\s+198\.18\.1\.65:0\s+Route\s+1\s+0\s+0\s+->\s+198\.18\.1\.66:0\s+Route\s+1`,
		`TCP\s+198\.18\.1\.63:22 rr persistent 360\s+->\s+198\.18\.1\.65:22\s+Route\s+1`,
		`TCP\s+198\.18\.1\.63:80 rr persistent 360\s+->\s+198\.18\.1\.65:80\s+Route\s+1\s+0\s+0\s+->\s+198\.18\.1\.66:80\s+Route\s+1`,
		`FWM\s+8 rr persistent 360`,
		`TCP\s+\[2001:db8::63\]:443 rr`,
	} {
		if !regexp.MustCompile(want).MatchString(flat(out)) {
			t.Errorf("ipvsadm -Ln lacks %s:\n%s", want, out)
		}
	}
	if !foreign.MatchString(flat(out)) {
		t.Fatalf("foreign service changed:\n%s", out)
	}

	// In sync: a sync and a full resync write nothing.
	if res, err := r.Sync(ctx, seedSet()); err != nil || res.Ops.Total() != 0 {
		t.Fatalf("sync in sync: %v %v", res, err)
	}
	if res, err := r.Resync(ctx); err != nil || res.Ops.Total() != 0 || res.Drift != 0 {
		t.Fatalf("resync in sync: %+v %v", res, err)
	}

	// Restart: a new reconciler adopts the kernel state without a write.
	r = open()
	if res, err := r.Adopt(ctx, seedSet(), nil); err != nil || res.Ops.Total() != 0 {
		t.Fatalf("adoption after restart: %v %v", res, err)
	}

	// ipvsadm -C: one resync puts lvsd's services back (not the foreign one:
	// lvsd does not own it).
	ipvsadm("-C")
	if res, err := r.Resync(ctx); err != nil || res.Ops[director.OpAddService] != 5 || res.Pending != 0 {
		t.Fatalf("repair after flush: %+v %v", res, err)
	}
	out = ipvsadm("-Ln")
	if n := strings.Count(out, "198.18.1.6"); n < 8 || strings.Contains(out, "198.18.9.1") {
		t.Fatalf("after repair:\n%s", out)
	}

	// A weight edited by hand is put back.
	ipvsadm("-e", "-t", "198.18.1.63:80", "-r", "198.18.1.66:80", "-g", "-w", "9")
	if res, err := r.Resync(ctx); err != nil || res.Ops[director.OpUpdateDest] != 1 {
		t.Fatalf("repair of a hand edit: %+v %v", res, err)
	}

	// A forwarding change is one in-place update.
	next := seedSet()
	next[2].Destinations[1].Forward = director.ForwardTunnel
	res, err = r.Sync(ctx, next)
	if err != nil || res.Ops.Total() != 1 || res.Ops[director.OpUpdateDest] != 1 {
		t.Fatalf("forwarding change: %v %v", res, err)
	}
	if out := flat(ipvsadm("-Ln")); !regexp.MustCompile(`198\.18\.1\.66:80\s+Tunnel\s+1`).MatchString(out) {
		t.Fatalf("forwarding not changed:\n%s", out)
	}
}

// flat joins ipvsadm's lines so a regexp can span a service and its dests.
func flat(s string) string { return strings.Join(strings.Fields(s), " ") }
