package director_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
)

// tcpSvc is a persistent-free TCP service on addr:port with rr.
func tcpSvc(addr string, port uint16) director.Service {
	a := netip.MustParseAddr(addr)
	bits := 32
	if a.Is6() {
		bits = 128
	}
	return director.Service{
		Key:             director.ServiceKey{Family: director.FamilyOf(a), Protocol: director.TCP, Address: a, Port: port},
		Scheduler:       "rr",
		PersistenceBits: bits,
	}
}

func persistent(s director.Service, timeout time.Duration) director.Service {
	s.Flags |= director.FlagPersistent
	s.Timeout = timeout
	return s
}

func fwmSvc(mark uint32, fam director.Family) director.Service {
	bits := 32
	if fam == director.IPv6 {
		bits = 128
	}
	return director.Service{
		Key:             director.ServiceKey{Family: fam, FWMark: mark},
		Scheduler:       "rr",
		Flags:           director.FlagPersistent,
		Timeout:         360 * time.Second,
		PersistenceBits: bits,
	}
}

func dest(addr string, port uint16, weight int) director.Destination {
	return director.Destination{
		Key:     director.DestKey{Address: netip.MustParseAddr(addr), Port: port},
		Weight:  weight,
		Forward: director.ForwardDR,
	}
}

func desired(s director.Service, ds ...director.Destination) director.DesiredService {
	return director.DesiredService{Service: s, Destinations: ds}
}

// opsString renders ops one per line, compactly, for readable comparisons.
func opsString(ops []director.Op) string {
	var b strings.Builder
	for _, o := range ops {
		fmt.Fprintf(&b, "%s %s", o.Kind, o.Service.Key)
		switch o.Kind {
		case director.OpAddDest, director.OpUpdateDest, director.OpDelDest:
			fmt.Fprintf(&b, " %s w=%d %s", o.Dest.Key, o.Dest.Weight, o.Dest.Forward)
		case director.OpAddService, director.OpUpdateService:
			fmt.Fprintf(&b, " %s flags=%#x t=%s bits=%d", o.Service.Scheduler, o.Service.Flags, o.Service.Timeout, o.Service.PersistenceBits)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func wantOps(t *testing.T, got []director.Op, want string) {
	t.Helper()
	if strings.TrimSpace(want) == "" {
		want = ""
	} else {
		want = strings.TrimLeft(dedent(want), "\n")
	}
	if g := opsString(got); g != want {
		t.Fatalf("ops differ\n--- got\n%s--- want\n%s", g, want)
	}
}

func dedent(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	out := strings.Join(lines, "\n")
	return strings.TrimRight(out, "\n") + "\n"
}
