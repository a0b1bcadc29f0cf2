package ipvsdp

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/ipvsnl"
)

func pcc() director.Service {
	return director.Service{
		Key:       director.ServiceKey{Family: director.IPv4, Protocol: director.TCP, Address: netip.MustParseAddr("198.18.1.100")},
		Scheduler: "rr", Flags: director.FlagPersistent, Timeout: 500 * time.Second, PersistenceBits: 24,
	}
}

func TestServiceRoundTrip(t *testing.T) {
	v6 := director.Service{
		Key:       director.ServiceKey{Family: director.IPv6, Protocol: director.UDP, Address: netip.MustParseAddr("2001:db8::100"), Port: 53},
		Scheduler: "sh", Flags: director.FlagSchedSH1 | director.FlagSchedSH2, PersistenceBits: 64, PEName: "sip",
	}
	fwm := director.Service{Key: director.ServiceKey{Family: director.IPv4, FWMark: 8}, Scheduler: "rr",
		Flags: director.FlagPersistent, Timeout: 360 * time.Second, PersistenceBits: 32}
	for _, s := range []director.Service{pcc(), v6, fwm} {
		n, err := toNLService(s)
		if err != nil {
			t.Fatalf("%s: %v", s.Key, err)
		}
		// The kernel reports HASHED; it must not leak into the model.
		n.Flags |= ipvsnl.FlagHashed
		if got := fromNLService(n); !reflect.DeepEqual(got, s) {
			t.Errorf("round trip of %s:\n got %+v\nwant %+v", s.Key, got, s)
		}
	}
	n, _ := toNLService(pcc())
	if n.Netmask != 0xFFFFFF00 || n.Timeout != 500 || n.Flags != ipvsnl.FlagPersistent {
		t.Errorf("PCC as sent: netmask %#x timeout %d flags %#x", uint32(n.Netmask), n.Timeout, n.Flags)
	}
}

func TestServiceConversionErrors(t *testing.T) {
	for _, c := range []struct {
		mut  func(*director.Service)
		want string
	}{
		{func(s *director.Service) { s.Timeout = 1500 * time.Millisecond }, "not a whole number of seconds"},
		{func(s *director.Service) { s.Timeout = -time.Second }, "not a whole number of seconds"},
		{func(s *director.Service) { s.PersistenceBits = 33 }, "out of range 0..32"},
		{func(s *director.Service) {
			s.Key = director.ServiceKey{Family: director.IPv6, Protocol: director.TCP, Address: netip.MustParseAddr("2001:db8::1"), Port: 80}
			s.PersistenceBits = 0
		}, "out of range 1..128"},
	} {
		s := pcc()
		c.mut(&s)
		if _, err := toNLService(s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
}

func TestNonPrefixMaskReadsAsMinusOne(t *testing.T) {
	n, _ := toNLService(pcc())
	n.Netmask = 0xFF00FF00
	if got := fromNLService(n).PersistenceBits; got != -1 {
		t.Errorf("PersistenceBits = %d, want -1", got)
	}
}

func TestOpMapping(t *testing.T) {
	svc := pcc()
	dst := director.Destination{Key: director.DestKey{Address: netip.MustParseAddr("198.18.2.1"), Port: 0}, Weight: 3,
		Forward: director.ForwardDR, UpperThreshold: 10, LowerThreshold: 2}
	want := map[director.OpKind]ipvsnl.Command{
		director.OpAddService: ipvsnl.CmdNewService, director.OpUpdateService: ipvsnl.CmdSetService, director.OpDelService: ipvsnl.CmdDelService,
		director.OpAddDest: ipvsnl.CmdNewDest, director.OpUpdateDest: ipvsnl.CmdSetDest, director.OpDelDest: ipvsnl.CmdDelDest,
	}
	for kind, cmd := range want {
		o, err := toNLOp(director.Op{Kind: kind, Service: svc, Dest: dst})
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if o.Cmd != cmd {
			t.Errorf("%s maps to %s, want %s", kind, o.Cmd, cmd)
		}
		if o.Service.Address != svc.Key.Address || o.Service.Family != ipvsnl.AFInet || o.Service.Protocol != ipvsnl.ProtoTCP {
			t.Errorf("%s: service key %+v", kind, o.Service)
		}
		switch kind {
		case director.OpAddDest, director.OpUpdateDest:
			if o.Dest.Weight != 3 || o.Dest.Forward != ipvsnl.ForwardRoute || o.Dest.UpperThreshold != 10 || o.Dest.LowerThreshold != 2 {
				t.Errorf("%s: dest %+v", kind, o.Dest)
			}
			if got := fromNLDest(o.Dest); got != dst {
				t.Errorf("%s: dest round trip %+v, want %+v", kind, got, dst)
			}
		case director.OpAddService, director.OpUpdateService:
			if o.Service.Scheduler != "rr" || o.Service.Timeout != 500 {
				t.Errorf("%s: service %+v", kind, o.Service)
			}
		}
	}
	tun := director.Destination{Key: director.DestKey{Address: netip.MustParseAddr("198.18.2.2")}, Weight: 1, Forward: director.ForwardTunnel,
		TunnelType: director.TunnelGUE, TunnelPort: 6080, TunnelFlags: director.TunnelRemCsum}
	if o, err := toNLOp(director.Op{Kind: director.OpUpdateDest, Service: svc, Dest: tun}); err != nil || o.Dest.TunnelType != ipvsnl.TunnelGUE ||
		o.Dest.TunnelPort != 6080 || o.Dest.TunnelFlags != 2 || fromNLDest(o.Dest) != tun {
		t.Errorf("tunnel dest maps to %+v (%v), round trip %+v", o.Dest, err, fromNLDest(o.Dest))
	}
	if _, err := toNLOp(director.Op{Kind: 42, Service: svc}); err == nil || !strings.Contains(err.Error(), "unknown op kind 42") {
		t.Errorf("unknown kind: %v", err)
	}
	bad := dst
	bad.Weight = 1 << 40
	if _, err := toNLOp(director.Op{Kind: director.OpAddDest, Service: svc, Dest: bad}); err == nil || !strings.Contains(err.Error(), "weight") {
		t.Errorf("huge weight: %v", err)
	}
}

func TestSyncPlan(t *testing.T) {
	master := SyncDaemon{State: SyncMaster, Interface: "eth0", SyncID: 1}
	backup := SyncDaemon{State: SyncBackup, Interface: "eth0", SyncID: 1}
	// What the kernel reports for them: defaults filled in.
	kmaster := master
	kmaster.MaxLen, kmaster.Group, kmaster.Port, kmaster.TTL = 1472, netip.MustParseAddr("224.0.0.81"), 8848, 1
	kbackup := kmaster
	kbackup.State = SyncBackup

	for _, c := range []struct {
		name      string
		running   []SyncDaemon
		want      []SyncDaemon
		stop      []ipvsnl.DaemonState
		startRole []ipvsnl.DaemonState
	}{
		{"start both", nil, []SyncDaemon{backup, master}, nil, []ipvsnl.DaemonState{SyncMaster, SyncBackup}},
		{"in sync despite kernel defaults", []SyncDaemon{kmaster, kbackup}, []SyncDaemon{master, backup}, nil, nil},
		{"promote: drop backup", []SyncDaemon{kmaster, kbackup}, []SyncDaemon{master}, []ipvsnl.DaemonState{SyncBackup}, nil},
		{"new syncid restarts", []SyncDaemon{kmaster}, []SyncDaemon{{State: SyncMaster, Interface: "eth0", SyncID: 2}},
			[]ipvsnl.DaemonState{SyncMaster}, []ipvsnl.DaemonState{SyncMaster}},
		{"explicit port differs", []SyncDaemon{kbackup}, []SyncDaemon{{State: SyncBackup, Interface: "eth0", SyncID: 1, Port: 9000}},
			[]ipvsnl.DaemonState{SyncBackup}, []ipvsnl.DaemonState{SyncBackup}},
		{"stop all", []SyncDaemon{kmaster, kbackup}, nil, []ipvsnl.DaemonState{SyncMaster, SyncBackup}, nil},
	} {
		stop, start, err := syncPlan(c.running, c.want)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var roles []ipvsnl.DaemonState
		for _, s := range start {
			roles = append(roles, s.State)
		}
		if !reflect.DeepEqual(stop, c.stop) || !reflect.DeepEqual(roles, c.startRole) {
			t.Errorf("%s: stop %v start %v; want stop %v start %v", c.name, stop, roles, c.stop, c.startRole)
		}
	}
	if _, _, err := syncPlan(nil, []SyncDaemon{master, master}); err == nil || !strings.Contains(err.Error(), "wanted twice") {
		t.Errorf("duplicate role: %v", err)
	}
	if _, _, err := syncPlan(nil, []SyncDaemon{{State: 0, Interface: "eth0"}}); err == nil {
		t.Error("role 0 accepted")
	}
}
