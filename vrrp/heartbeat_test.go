package vrrp

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func sampleHeartbeat() Heartbeat {
	return Heartbeat{
		Name: "dir-a", Boot: 0xdeadbeefcafef00d, Seq: 42, Releasing: true, ReadsV2: true,
		Groups: map[string]GroupView{
			"web": {Candidate: true, Priority: 150, Claim: true, Vote: "dir-a"},
			"db":  {Candidate: true, Priority: 100, Fault: true, Want: true},
			"x":   {Vote: "dir-b"},
			"y":   {Candidate: true, Priority: 1, Yield: true, YieldSince: 1_790_000_000_123_456_789},
		},
		Digest: []byte{1, 2, 3},
	}
}

func TestHeartbeatRoundTrip(t *testing.T) {
	h := sampleHeartbeat()
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Heartbeat
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, h)
	}
	b2, _ := got.MarshalBinary()
	if !bytes.Equal(b, b2) {
		t.Fatal("encoding is not deterministic")
	}
	var empty Heartbeat
	if err := empty.UnmarshalBinary(mustMarshal(t, Heartbeat{Name: "w"})); err != nil || empty.Name != "w" || empty.Groups != nil || empty.Digest != nil || !empty.ReadsV2 {
		t.Fatalf("minimal heartbeat: %+v %v", empty, err)
	}
}

func mustMarshal(t *testing.T, h Heartbeat) []byte {
	t.Helper()
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHeartbeatRejectsBadInput(t *testing.T) {
	good := mustMarshal(t, sampleHeartbeat())
	for name, c := range map[string]struct {
		b    []byte
		want string
	}{
		"empty":     {nil, "truncated in kind"},
		"user msg":  {[]byte{msgUser, 1}, "kind"},
		"version":   {append([]byte{msgHeartbeat, 9}, good[2:]...), "version 9"},
		"truncated": {good[:len(good)-2], "truncated"},
		"trailing":  {append(append([]byte(nil), good...), 0), "trailing"},
		"no name":   {mustMarshalRaw(func(b []byte) []byte { return b[:19] }, good, []byte{0, 0, 0}), "name"},
	} {
		var h Heartbeat
		err := h.UnmarshalBinary(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want error containing %q", name, err, c.want)
		}
	}
	for name, h := range map[string]Heartbeat{
		"no name":      {},
		"long name":    {Name: strings.Repeat("n", 65)},
		"big digest":   {Name: "a", Digest: make([]byte, maxDigest+1)},
		"blank group":  {Name: "a", Groups: map[string]GroupView{"": {}}},
		"long vote":    {Name: "a", Groups: map[string]GroupView{"g": {Vote: strings.Repeat("v", 65)}}},
		"space in grp": {Name: "a", Groups: map[string]GroupView{"g 1": {}}},
	} {
		if _, err := h.MarshalBinary(); err == nil {
			t.Errorf("%s: marshalled without error", name)
		}
	}
}

// mustMarshalRaw splices a prefix of good with tail, to build malformed input.
func mustMarshalRaw(cut func([]byte) []byte, good, tail []byte) []byte {
	return append(append([]byte(nil), cut(good)...), tail...)
}

func FuzzHeartbeatUnmarshal(f *testing.F) {
	h := sampleHeartbeat()
	b, _ := h.MarshalBinary()
	f.Add(b)
	f.Add([]byte{msgHeartbeat, heartbeatVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Heartbeat
		if err := h.UnmarshalBinary(b); err != nil {
			return
		}
		// Whatever decodes must re-encode to a heartbeat that decodes the same.
		b2, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded heartbeat does not re-encode: %v", err)
		}
		var h2 Heartbeat
		if err := h2.UnmarshalBinary(b2); err != nil || !reflect.DeepEqual(h, h2) {
			t.Fatalf("re-decode mismatch: %v", err)
		}
	})
}

func TestHeartbeatVersionSent(t *testing.T) {
	plain := Heartbeat{Name: "a", Groups: map[string]GroupView{"g": {Candidate: true, Priority: 100}}}
	if b := mustMarshal(t, plain); b[1] != 1 {
		t.Errorf("without a demotion: version %d, want 1 (readable by nodes not yet upgraded)", b[1])
	}
	plain.Groups["h"] = GroupView{Candidate: true, Priority: 1, Yield: true, YieldSince: 3}
	if b := mustMarshal(t, plain); b[1] != 2 {
		t.Errorf("with a demotion: version %d, want 2", b[1])
	}
	// For a peer that reads only version 1: no stamp, version 1.
	plain.V1Only = true
	b := mustMarshal(t, plain)
	var got Heartbeat
	if err := got.UnmarshalBinary(b); err != nil || b[1] != 1 || got.Groups["h"].Yield || got.Groups["h"].Priority != 1 {
		t.Errorf("V1Only: version %d, decoded %+v (%v), want version 1, no stamp, priority kept", b[1], got.Groups["h"], err)
	}
}

func TestHeartbeatReadsVersion1(t *testing.T) {
	// A peer still on version 1 has no demotion stamps; it must stay
	// readable during a rolling upgrade.
	h := Heartbeat{Name: "dir-b", Seq: 7, Groups: map[string]GroupView{"web": {Candidate: true, Priority: 100, Claim: true}}}
	b := mustMarshal(t, h)
	b[2] &^= hbReadsV2 // as an older build sends it
	var got Heartbeat
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatalf("version 1: %v", err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("version 1:\n got %+v\nwant %+v", got, h)
	}
	// Version 1 had no yield flag: a stray bit must not make it read a stamp.
	h.Groups["web"] = GroupView{Candidate: true, Priority: 1, Yield: true, YieldSince: 5}
	b = mustMarshal(t, h)
	b[1] = 1
	if err := got.UnmarshalBinary(b); err == nil || !strings.Contains(err.Error(), "trailing bytes") {
		t.Fatalf("version 1 with a stamp: err %v, want trailing bytes", err)
	}
	// A version 2 stamp cut short names the field.
	short := mustMarshal(t, Heartbeat{Name: "a", Groups: map[string]GroupView{"g": {Yield: true, YieldSince: 9}}})
	short = short[:len(short)-5]
	if err := got.UnmarshalBinary(short); err == nil || !strings.Contains(err.Error(), "demoted-since") {
		t.Fatalf("short stamp: err %v, want it named", err)
	}
}

// TestSpecRejectsOversizedHeartbeat: groups whose heartbeat (every group
// demoted, voting) cannot fit one packet are refused when the spec is
// checked, not found out when a demotion fails to encode.
func TestSpecRejectsOversizedHeartbeat(t *testing.T) {
	spec := func(groups int) Spec {
		s := Spec{Node: NodeSpec{Name: "director-a", Interface: "lo"},
			Cluster: &ClusterSpec{Bind: "127.0.0.1:7946", Insecure: true, Members: []string{"director-a", "director-b", "witness-1"},
				Witnesses: []string{"witness-1"}}} // with witnesses, votes are sent
		for i := range groups {
			s.Groups = append(s.Groups, GroupSpec{Name: fmt.Sprintf("group-%02d", i), Priority: 100,
				Addresses: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 9, byte(i + 1)}), 32)}})
		}
		return s
	}
	n := 1
	for ; n < maxGroups; n++ {
		s := spec(n + 1)
		if err := s.Validate(); err != nil {
			if !strings.Contains(err.Error(), "heartbeat") {
				t.Fatalf("%d groups: %v", n+1, err)
			}
			break
		}
	}
	if n == maxGroups {
		t.Fatalf("%d groups validate; want the heartbeat bound to refuse some", maxGroups)
	}
	// The largest accepted spec's worst heartbeat does encode.
	s := spec(n)
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	h := Heartbeat{Name: "director-a", Seq: 1, Digest: make([]byte, 8), Groups: map[string]GroupView{}}
	for _, g := range s.Groups {
		h.Groups[g.Name] = GroupView{Candidate: true, Priority: 1, Yield: true, YieldSince: 1, Vote: "director-b"}
	}
	if _, err := h.MarshalBinary(); err != nil {
		t.Fatalf("%d groups passed validation but their heartbeat does not encode: %v", n, err)
	}
	t.Logf("%d groups of 8-character names fit", n)
}
