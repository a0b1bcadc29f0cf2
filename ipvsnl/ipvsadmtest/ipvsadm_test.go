package ipvsadmtest

import (
	"reflect"
	"testing"
)

// The seed's three listings, with the addresses mapped into the test nets.
const seedListing = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.18.1.63:0 rr persistent 500
  -> 198.18.1.65:0                Route   1      0          0
  -> 198.18.1.66:0                Route   1      0          2
TCP  198.18.1.63:22 rr persistent 360
  -> 198.18.1.65:22               Route   1      0          2
UDP  [2001:db8::63]:53 sh persistent 60 mask 64 pe sip ops
  -> [2001:db8::65]:53            Masq    3      1          0
FWM  8 rr persistent 360 mask 255.255.255.0
  -> 198.18.1.65:0                Route   1      0          2
FWM  9 IPv6 wlc
`

func TestParseSeed(t *testing.T) {
	got, err := Parse(seedListing)
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{
		{Proto: "TCP", Addr: "198.18.1.63:0", Scheduler: "rr", Persistent: true, Timeout: 500, Dests: []Dest{
			{Addr: "198.18.1.65:0", Forward: "Route", Numbers: []uint64{1, 0, 0}},
			{Addr: "198.18.1.66:0", Forward: "Route", Numbers: []uint64{1, 0, 2}},
		}},
		{Proto: "TCP", Addr: "198.18.1.63:22", Scheduler: "rr", Persistent: true, Timeout: 360, Dests: []Dest{
			{Addr: "198.18.1.65:22", Forward: "Route", Numbers: []uint64{1, 0, 2}},
		}},
		{Proto: "UDP", Addr: "[2001:db8::63]:53", Scheduler: "sh", Persistent: true, Timeout: 60, Mask: "64", PE: "sip", OnePacket: true, Dests: []Dest{
			{Addr: "[2001:db8::65]:53", Forward: "Masq", Numbers: []uint64{3, 1, 0}},
		}},
		{Proto: "FWM", Addr: "8", Scheduler: "rr", Persistent: true, Timeout: 360, Mask: "255.255.255.0", Dests: []Dest{
			{Addr: "198.18.1.65:0", Forward: "Route", Numbers: []uint64{1, 0, 2}},
		}},
		{Proto: "FWM", Addr: "9", IPv6: true, Scheduler: "wlc"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if got[4].Key() != "FWM 9 IPv6" || got[0].Key() != "TCP 198.18.1.63:0" {
		t.Errorf("keys %q %q", got[4].Key(), got[0].Key())
	}
}

func TestParseStatsAndPersistentConn(t *testing.T) {
	stats := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  198.18.1.100:80                     3       18        0     1170        0
  -> 198.18.2.1:80                       3       18        0     1170        0
`
	got, err := Parse(stats)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !reflect.DeepEqual(got[0].Numbers, []uint64{3, 18, 0, 1170, 0}) || !reflect.DeepEqual(got[0].Dests[0].Numbers, []uint64{3, 18, 0, 1170, 0}) {
		t.Errorf("stats listing parsed as %+v", got)
	}
	pc := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn
  -> RemoteAddress:Port
TCP  198.18.1.100:0 rr persistent 500
  -> 198.18.2.1:0                 1         1          0          1
`
	got, err = Parse(pc)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !reflect.DeepEqual(got[0].Dests[0].Numbers, []uint64{1, 1, 0, 1}) {
		t.Errorf("persistent-conn listing parsed as %+v", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{
		"  -> 198.18.2.1:80 Route 1 0 0\n",
		"ICMP 198.18.1.1:0 rr\n",
		"TCP 198.18.1.1:80 rr persistent soon\n",
		"TCP 198.18.1.1:80 rr\n  -> 198.18.2.1:80 Route one 0 0\n",
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestParseDaemons(t *testing.T) {
	out := "master sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n" +
		"backup sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
	ds, err := ParseDaemons(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].Role != "master" || ds[1].Role != "backup" || ds[0].Fields["syncid"] != "7" || ds[1].Fields["mcast"] != "eth0" || ds[0].Fields["port"] != "8848" {
		t.Errorf("parsed %+v", ds)
	}
	if _, err := ParseDaemons("slave sync daemon (x=1)\n"); err == nil {
		t.Error("unknown role accepted")
	}
	if _, err := ParseDaemons("master sync daemon (mcast)\n"); err == nil {
		t.Error("field without value accepted")
	}
}
