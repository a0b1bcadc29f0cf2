package ipvsconn

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A table as Linux 6.1 prints it: a TCP connection and the persistence
// template of a port-0 service (state ASSURED, as seen in the lab VM), a
// fwmark template, an IPv6 entry and one with a persistence engine.
const sample = `Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP C612000A D9B3 C6120064 0050 C6120016 0050 ESTABLISHED     898
TCP C612000A 0000 C6120064 0000 C6120016 0000 ASSURED         487
IP  C612000D 0000 00000008 0000 C6120015 0000 NONE            355
TCP 2001:0db8:0000:0000:0000:0000:0000:000a C350 2001:0db8:0000:0000:0000:0000:0000:0064 0050 2001:0db8:0000:0000:0000:0000:0000:0015 1F90 TIME_WAIT        97
UDP C612000A 1388 C6120064 13C4 C6120016 13C4 NONE            120 sip 4a2b
`

func TestParse(t *testing.T) {
	conns, err := Parse(strings.NewReader(sample), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 5 {
		t.Fatalf("%d entries, want 5", len(conns))
	}
	want := Conn{Protocol: "TCP", Client: netip.MustParseAddrPort("198.18.0.10:55731"), Virtual: netip.MustParseAddrPort("198.18.0.100:80"),
		Dest: netip.MustParseAddrPort("198.18.0.22:80"), State: "ESTABLISHED", Expires: 898 * time.Second}
	if conns[0] != want {
		t.Errorf("entry 0 = %+v\nwant %+v", conns[0], want)
	}
	if conns[0].Template() || !conns[1].Template() || !conns[2].Template() {
		t.Error("templates misidentified")
	}
	if conns[1].Dest != netip.MustParseAddrPort("198.18.0.22:0") || conns[1].Expires != 487*time.Second {
		t.Errorf("template = %+v", conns[1])
	}
	if conns[2].Virtual.Addr() != netip.MustParseAddr("0.0.0.8") {
		t.Errorf("fwmark template virtual = %v", conns[2].Virtual)
	}
	v6 := conns[3]
	if v6.Client != netip.MustParseAddrPort("[2001:db8::a]:50000") || v6.Dest.Port() != 8080 || v6.State != "TIME_WAIT" {
		t.Errorf("IPv6 entry = %+v", v6)
	}
	if conns[4].PEName != "sip" || conns[4].PEData != "4a2b" {
		t.Errorf("persistence engine fields = %+v", conns[4])
	}
}

func TestParseFilters(t *testing.T) {
	client := netip.MustParseAddr("198.18.0.10")
	conns, err := Parse(strings.NewReader(sample), func(c Conn) bool { return c.Client.Addr() == client })
	if err != nil || len(conns) != 3 {
		t.Fatalf("filtered to %d entries (%v), want 3", len(conns), err)
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	for _, bad := range []string{
		"TCP C612000A D9B3 C6120064 0050 C6120016",
		"TCP C612000 D9B3 C6120064 0050 C6120016 0050 ESTABLISHED 898",
		"TCP C612000A ZZZZ C6120064 0050 C6120016 0050 ESTABLISHED 898",
		"TCP C612000A D9B3 C6120064 0050 C6120016 0050 ESTABLISHED soon",
		"TCP 2001:db8::zz D9B3 C6120064 0050 C6120016 0050 ESTABLISHED 898",
	} {
		if _, err := Parse(strings.NewReader(bad+"\n"), nil); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: err = %v, want a line-numbered error", bad, err)
		}
	}
}

func TestReadMissing(t *testing.T) {
	if _, err := Read("/nonexistent/ip_vs_conn", nil); err == nil {
		t.Fatal("want an error for a missing table (no IPVS)")
	}
}
