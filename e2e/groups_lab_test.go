//go:build lab

package e2e

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestHAReloadVIPGroup: a reload adds an address to the running VIP group
// on both directors (the owner takes it, no restart), then a reload raises
// the standby's priority: it preempts, and the client's ARP entry for the
// added address follows it (the new address is announced like the old).
// A reload that moves the group to another interface is refused whole.
func TestHAReloadVIPGroup(t *testing.T) {
	const extra = "198.18.0.101"
	l := newHALab(t, false)
	l.start()
	for _, d := range []*lvsd{l.a, l.b} {
		ln, err := d.host.Listen("tcp", ":9099")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	reconfigure := func(d *lvsd, self, peer string, prio int, edit func(string) string) string {
		t.Helper()
		d.writeConfig("eth0", edit(haConfig(self, peer, prio, false, "")))
		return d.mustCtl("reload")
	}
	addExtra := func(c string) string {
		return strings.Replace(c, `addresses = ["198.18.0.100/32"]`, `addresses = ["198.18.0.100/32", "`+extra+`/32"]`, 1)
	}
	mustMatch(t, reconfigure(l.a, "198.18.0.11", "198.18.0.12", 150, addExtra), `vip_group web updated`)
	mustMatch(t, reconfigure(l.b, "198.18.0.12", "198.18.0.11", 100, addExtra), `vip_group web updated`)
	mustMatch(t, l.a.mustCtl("status"), `web\s+MASTER\s+dir-a\s+150\s.*`+strings.ReplaceAll(extra, ".", `\.`))

	dial := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := l.client.Dial(ctx, "tcp", net.JoinHostPort(extra, "9099"))
		if err == nil {
			c.Close()
		}
		return err
	}
	eventually(t, 10*time.Second, "the client reaches the added address", func() bool { return dial() == nil })
	if mac, ok := l.client.Neighbor(extra); !ok || mac.String() != l.dirA.MAC("").String() {
		t.Fatalf("client resolves %s to %v (ok %v), want dir-a's %s", extra, mac, ok, l.dirA.MAC(""))
	}

	// The standby's priority rises by reload: it preempts, and announces
	// the added address too, so the client's entry moves without a new ARP
	// request of its own.
	mustMatch(t, reconfigure(l.b, "198.18.0.12", "198.18.0.11", 200, addExtra), `vip_group web updated`)
	l.waitOwner(l.b, l.dirB)
	want := l.dirB.MAC("").String()
	eventually(t, 10*time.Second, "the client's entry for "+extra+" moves to dir-b", func() bool {
		mac, ok := l.client.Neighbor(extra)
		return ok && mac.String() == want
	})
	if err := dial(); err != nil {
		t.Fatalf("dial %s after the move: %v", extra, err)
	}

	// Another interface cannot be taken in place: refused, nothing changes.
	out := reconfigure(l.b, "198.18.0.12", "198.18.0.11", 200, func(c string) string {
		return strings.Replace(addExtra(c), "[[vip_group]]\nname = \"web\"\n", "[[vip_group]]\nname = \"web\"\ninterface = \"lo\"\n", 1)
	})
	mustMatch(t, out, `interface eth0 -> lo`, `restart lvsd to apply it`)
	mustMatch(t, l.b.mustCtl("status"), `web\s+MASTER\s+dir-b\s+200\s`)
	if err := dial(); err != nil {
		t.Fatalf("dial %s after a refused reload: %v", extra, err)
	}
}
