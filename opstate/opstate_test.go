package opstate

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

var (
	rs1 = netip.MustParseAddrPort("198.18.1.65:80")
	rs2 = netip.MustParseAddrPort("198.18.1.66:80")
)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func TestPutPersistsAndReopens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "runtime.json")
	s, err := Open("dir-a", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(Record{Service: "web", Backend: rs1, Admin: Drained}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(Record{Service: "web", Backend: rs2, Added: true, Weight: 3}); err != nil {
		t.Fatal(err)
	}
	s2, err := Open("dir-a", path)
	if err != nil {
		t.Fatal(err)
	}
	got := s2.Records()
	if len(got) != 2 || got[0].Admin != Drained || !got[1].Added || got[1].Weight != 3 {
		t.Fatalf("reopened records = %+v", got)
	}
	if s.Digest() != s2.Digest() {
		t.Error("digest differs after reopen")
	}
}

func TestLocalWritesSortAfterEverythingSeen(t *testing.T) {
	// A peer whose clock runs ahead wrote first; our later write must still win.
	now := time.Unix(1000, 0)
	a, _ := Open("dir-a", "", WithClock(fixedClock(now)))
	remote := Record{Service: "web", Backend: rs1, Admin: Disabled, Version: Version{Wall: now.Add(time.Hour).UnixNano(), Node: "dir-b"}}
	if ch, err := a.Merge([]Record{remote}); err != nil || len(ch) != 1 {
		t.Fatalf("merge changed %v, err %v", ch, err)
	}
	r, err := a.Put(Record{Service: "web", Backend: rs1})
	if err != nil {
		t.Fatal(err)
	}
	if !remote.Version.Less(r.Version) {
		t.Fatalf("local version %+v does not sort after remote %+v", r.Version, remote.Version)
	}
	got, _ := a.Get(Key{"web", rs1})
	if got.Admin != AdminNone {
		t.Fatalf("admin = %q, want cleared", got.Admin)
	}
}

func TestMergeIsLastWriterWinsAndConverges(t *testing.T) {
	t0 := time.Unix(2000, 0)
	a, _ := Open("dir-a", "", WithClock(fixedClock(t0)))
	b, _ := Open("dir-b", "", WithClock(fixedClock(t0))) // same wall time: node name breaks the tie
	ra, _ := a.Put(Record{Service: "web", Backend: rs1, Admin: Drained})
	rb, _ := b.Put(Record{Service: "web", Backend: rs1, Admin: Disabled})
	if _, err := a.Merge([]Record{rb}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Merge([]Record{ra}); err != nil {
		t.Fatal(err)
	}
	ga, _ := a.Get(Key{"web", rs1})
	gb, _ := b.Get(Key{"web", rs1})
	if ga != gb || ga.Admin != Disabled {
		t.Fatalf("replicas diverge or wrong winner: a=%+v b=%+v", ga, gb)
	}
	if a.Digest() != b.Digest() {
		t.Fatal("digests differ after convergence")
	}
	// Re-merging an old record changes nothing.
	if ch, _ := a.Merge([]Record{ra}); len(ch) != 0 {
		t.Fatalf("stale merge changed %v", ch)
	}
}

func TestMergeSkipsInvalidRecords(t *testing.T) {
	s, _ := Open("dir-a", "")
	ch, err := s.Merge([]Record{{Service: "", Backend: rs1}, {Service: "web"}})
	if err != nil || len(ch) != 0 || len(s.Records()) != 0 {
		t.Fatalf("invalid records were merged: %v %v %v", ch, err, s.Records())
	}
}

func TestPutRejectsIncompleteRecord(t *testing.T) {
	s, _ := Open("dir-a", "")
	if _, err := s.Put(Record{Service: "web"}); err == nil {
		t.Fatal("want an error for a record without backend")
	}
}

func TestPutPersistFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := Open("dir-a", filepath.Join(dir, "sub", "runtime.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(Record{Service: "web", Backend: rs1, Admin: Drained}); err == nil {
		t.Fatal("want a persistence error: the directory does not exist")
	}
	if len(s.Records()) != 0 {
		t.Fatalf("failed put left %v", s.Records())
	}
}

func TestOpenRejectsCorruptFile(t *testing.T) {
	for name, content := range map[string]string{
		"not json":      "{",
		"wrong format":  `{"format":7,"records":[]}`,
		"unknown admin": `{"format":1,"records":[{"service":"web","backend":"198.18.1.65:80","admin":"sleeping","version":{"wall":1,"node":"a"}}]}`,
		"no backend":    `{"format":1,"records":[{"service":"web","version":{"wall":1,"node":"a"}}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "runtime.json")
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Open("dir-a", p); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestForService(t *testing.T) {
	s, _ := Open("dir-a", "")
	s.Put(Record{Service: "web", Backend: rs2, Admin: Drained})
	s.Put(Record{Service: "ssh", Backend: rs1, Admin: Disabled})
	s.Put(Record{Service: "web", Backend: rs1, Removed: true})
	got := s.ForService("web")
	if len(got) != 2 || got[0].Backend != rs1 || got[1].Backend != rs2 {
		t.Fatalf("ForService(web) = %+v", got)
	}
}

// TestForServiceMatchesRecords: the per-service index answers what a scan
// of every record would, after puts, merges, and a put that failed to
// persist (which must leave no trace).
func TestForServiceMatchesRecords(t *testing.T) {
	s, err := Open("a", "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		svc := fmt.Sprintf("svc-%d", i%4)
		if _, err := s.Put(Record{Service: svc, Backend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), 80), Admin: Drained}); err != nil {
			t.Fatal(err)
		}
	}
	peer := []Record{{Service: "svc-9", Backend: netip.MustParseAddrPort("198.18.2.1:80"), Added: true, Weight: 3, Version: Version{Wall: 1 << 62, Node: "b"}}}
	if _, err := s.Merge(peer); err != nil {
		t.Fatal(err)
	}
	// A store whose file cannot be written refuses a put and keeps nothing.
	bad, err := Open("a", filepath.Join(t.TempDir(), "missing", "runtime.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Put(Record{Service: "x", Backend: netip.MustParseAddrPort("198.18.3.1:80")}); err == nil {
		t.Fatal("put into an unwritable directory succeeded")
	}
	if got := bad.ForService("x"); len(got) != 0 {
		t.Fatalf("a failed put left %v in the index", got)
	}
	for _, svc := range []string{"svc-0", "svc-3", "svc-9", "nope"} {
		var want []Record
		for _, r := range s.Records() {
			if r.Service == svc {
				want = append(want, r)
			}
		}
		if got := s.ForService(svc); !reflect.DeepEqual(got, want) {
			t.Errorf("ForService(%s):\n got %v\nwant %v", svc, got, want)
		}
	}
}

// TestMergeRefusesFutureRecords: a peer's record stamped far in the future
// (beyond clock skew) is refused: it would win over every later local
// change of that backend.
func TestMergeRefusesFutureRecords(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	s, err := Open("a", "", WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	far := Record{Service: "web", Backend: rs1, Admin: Drained, Version: Version{Wall: 1<<63 - 1, Node: "b"}}
	near := Record{Service: "web", Backend: rs2, Admin: Drained, Version: Version{Wall: now.Add(time.Minute).UnixNano(), Node: "b"}}
	changed, err := s.Merge([]Record{far, near})
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 1 || changed[0] != near.Key() {
		t.Fatalf("merged %v, want only the record within clock skew", changed)
	}
	if _, ok := s.Get(far.Key()); ok {
		t.Fatal("a record stamped in 2262 was merged")
	}
}

// TestPutStampsPerKey: a record stamped while this director's clock ran
// ahead does not drag later changes of other backends past what peers
// accept once the clock is fixed; the same backend still sorts after its
// own last write. Refused peer records are counted.
func TestPutStampsPerKey(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	clock := now.Add(2 * time.Hour) // the clock runs ahead at first
	s, err := Open("a", "", WithClock(func() time.Time { return clock }))
	if err != nil {
		t.Fatal(err)
	}
	ahead, err := s.Put(Record{Service: "web", Backend: rs1, Admin: Drained})
	if err != nil {
		t.Fatal(err)
	}
	clock = now // NTP fixed it
	other, err := s.Put(Record{Service: "web", Backend: rs2, Admin: Drained})
	if err != nil {
		t.Fatal(err)
	}
	if other.Version.Wall != now.UnixNano() {
		t.Errorf("another backend's change stamped %v, want now", time.Unix(0, other.Version.Wall).Sub(now))
	}
	same, err := s.Put(Record{Service: "web", Backend: rs1})
	if err != nil {
		t.Fatal(err)
	}
	if !ahead.Version.Less(same.Version) {
		t.Errorf("a later change of the same backend (%d) does not sort after its earlier one (%d)", same.Version.Wall, ahead.Version.Wall)
	}
	peer, _ := Open("b", "", WithClock(func() time.Time { return now }))
	if _, err := peer.Merge([]Record{ahead, other}); err != nil {
		t.Fatal(err)
	}
	if peer.Refused() != 1 {
		t.Errorf("peer refused %d records, want 1 (the one stamped two hours ahead)", peer.Refused())
	}
}
