package director_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/dptest"
)

// logBuf collects log output for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newReconciler returns a reconciler whose logs are kept for assertions and
// printed if the test fails.
func newReconciler(t *testing.T, dp director.Dataplane, opts ...director.Option) (*director.Reconciler, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reconciler log:\n%s", logs)
		}
	})
	return director.New(dp, log, opts...), logs
}

// seedSet is the seed's three persistence models mapped into 198.18.0.0/15,
// plus an IPv6 service.
func seedSet() []director.DesiredService {
	pcc := persistent(tcpSvc("198.18.1.63", 0), 500*time.Second)
	ppc22 := persistent(tcpSvc("198.18.1.63", 22), 360*time.Second)
	ppc80 := persistent(tcpSvc("198.18.1.63", 80), 360*time.Second)
	v6 := tcpSvc("2001:db8::63", 443)
	return []director.DesiredService{
		desired(pcc, dest("198.18.1.65", 0, 1), dest("198.18.1.66", 0, 1)),
		desired(ppc22, dest("198.18.1.65", 22, 1)),
		desired(ppc80, dest("198.18.1.65", 80, 1), dest("198.18.1.66", 80, 1)),
		desired(fwmSvc(8, director.IPv4), dest("198.18.1.65", 0, 1), dest("198.18.1.66", 0, 1)),
		desired(v6, dest("2001:db8::65", 443, 1), dest("2001:db8::66", 443, 2)),
	}
}

// wantTable fails unless the fake holds exactly want (plus the extra services).
func wantTable(t *testing.T, fake *dptest.Fake, want []director.DesiredService, extra ...director.DesiredService) {
	t.Helper()
	var norm []director.DesiredService
	for _, d := range append(slices.Clone(want), extra...) {
		c := director.DesiredService{Service: d.Service, Destinations: slices.Clone(d.Destinations)}
		c.Service.Flags &^= director.FlagHashed
		slices.SortFunc(c.Destinations, func(a, b director.Destination) int { return a.Key.Compare(b.Key) })
		norm = append(norm, c)
	}
	slices.SortFunc(norm, func(a, b director.DesiredService) int { return a.Service.Key.Compare(b.Service.Key) })
	got := fake.Table()
	if fmt.Sprint(got) != fmt.Sprint(norm) {
		t.Fatalf("kernel table differs\n got: %v\nwant: %v", got, norm)
	}
}

func countKinds(ops []director.Op) map[director.OpKind]int {
	m := map[director.OpKind]int{}
	for _, o := range ops {
		m[o.Kind]++
	}
	return m
}

func TestAdoptMatchingKernelWritesNothing(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	set := seedSet()
	for _, d := range set {
		// Reversed destination order: the kernel lists them in its own order.
		ds := slices.Clone(d.Destinations)
		slices.Reverse(ds)
		fake.Put(d.Service, ds...)
	}
	r, _ := newReconciler(t, fake)
	res, err := r.Adopt(ctx, set, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w := fake.Writes(); len(w) != 0 {
		t.Fatalf("adoption of a matching kernel wrote:\n%s", opsString(w))
	}
	if res.Ops.Total() != 0 || res.Pending != 0 {
		t.Fatalf("result %+v, want no ops and nothing pending", res)
	}
	if reads := fake.Reads(); reads.Services != 1 || reads.Destinations != len(set) {
		t.Fatalf("reads %+v, want one service dump and one destination read per adopted service", reads)
	}
	// And the following sync of the same state writes nothing either.
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	if w := fake.Writes(); len(w) != 0 {
		t.Fatalf("sync after adoption wrote:\n%s", opsString(w))
	}
}

func TestAdoptDifferingWeightIsOneUpdate(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	set := seedSet()
	for i, d := range set {
		ds := slices.Clone(d.Destinations)
		if i == 2 {
			ds[1].Weight = 7 // changed in config while lvsd was down
		}
		fake.Put(d.Service, ds...)
	}
	r, _ := newReconciler(t, fake)
	if _, err := r.Adopt(ctx, set, nil); err != nil {
		t.Fatal(err)
	}
	wantOps(t, fake.Writes(), `update-dest tcp:198.18.1.63:80 198.18.1.66:80 w=1 dr`)
	wantTable(t, fake, set)
}

func TestAdoptRemovesUndesiredDestinations(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	set := seedSet()
	for _, d := range set {
		fake.Put(d.Service, d.Destinations...)
	}
	stray := dest("2001:db8::99", 443, 1) // removed from the config while lvsd was down
	fake.SetDest(set[4].Service.Key, stray)
	r, _ := newReconciler(t, fake)
	if _, err := r.Adopt(ctx, set, nil); err != nil {
		t.Fatal(err)
	}
	wantOps(t, fake.Writes(), `del-dest tcp:[2001:db8::63]:443 [2001:db8::99]:443 w=1 dr`)
	wantTable(t, fake, set)
}

func TestAdoptLeavesUnownedAndDeletesOrphans(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	set := seedSet()[:2]
	// kube-proxy's service: not desired, never owned.
	foreign := desired(tcpSvc("198.18.9.1", 443), dest("198.18.9.2", 443, 1))
	fake.Put(foreign.Service, foreign.Destinations...)
	// Removed from the config while lvsd was down.
	orphan := desired(tcpSvc("198.18.1.70", 80), dest("198.18.1.65", 80, 1))
	fake.Put(orphan.Service, orphan.Destinations...)
	gone := tcpSvc("198.18.1.71", 80).Key // owned before, already gone from the kernel

	r, _ := newReconciler(t, fake)
	if _, err := r.Adopt(ctx, set, []director.ServiceKey{set[0].Service.Key, orphan.Service.Key, gone}); err != nil {
		t.Fatal(err)
	}
	w := fake.Writes()
	if got := countKinds(w); got[director.OpDelService] != 1 || got[director.OpAddService] != 2 || got[director.OpDelDest] != 0 {
		t.Fatalf("want 2 adds and the orphan's delete, got\n%s", opsString(w))
	}
	for _, op := range w {
		if op.Service.Key == foreign.Service.Key || op.Service.Key == gone {
			t.Fatalf("touched a service it does not own: %s", op)
		}
	}
	wantTable(t, fake, set, foreign)
	if owned := r.Owned(); !slices.Equal(owned, []director.ServiceKey{set[0].Service.Key, set[1].Service.Key}) {
		t.Fatalf("owned %v", owned)
	}

	// Later syncs, removals and resyncs never touch the foreign service either.
	fake.ResetWrites()
	if _, err := r.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RemoveService(ctx, foreign.Service.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, op := range fake.Writes() {
		if op.Service.Key == foreign.Service.Key {
			t.Fatalf("touched a service it does not own: %s", op)
		}
	}
	wantTable(t, fake, nil, foreign)
	if owned := r.Owned(); len(owned) != 0 {
		t.Fatalf("still owns %v after syncing an empty set", owned)
	}
}

func TestAdoptReadErrorWritesNothing(t *testing.T) {
	fake := dptest.New()
	fake.FailReads(errors.New("netlink: boom"))
	r, _ := newReconciler(t, fake)
	_, err := r.Adopt(context.Background(), seedSet(), nil)
	if err == nil || !strings.Contains(err.Error(), "adopt: list kernel services: netlink: boom") {
		t.Fatalf("want the read error, got %v", err)
	}
	if len(fake.Writes()) != 0 || len(r.Owned()) != 0 {
		t.Fatal("a failed adoption changed something")
	}
}

func TestSyncAppliesChangesAndIsIdempotent(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	if _, err := r.Adopt(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
	set := seedSet()
	res, err := r.Sync(ctx, set)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops[director.OpAddService] != 5 || res.Ops[director.OpAddDest] != 9 || res.Ops.Total() != 14 {
		t.Fatalf("initial sync %v", res.Ops)
	}
	wantTable(t, fake, set)

	fake.ResetWrites()
	res, err = r.Sync(ctx, seedSet())
	if err != nil || res.Ops.Total() != 0 || len(fake.Writes()) != 0 {
		t.Fatalf("sync of the same state: %v %v, writes %d", res, err, len(fake.Writes()))
	}

	// Reload: PCC timeout changes, one PPC backend is removed, v6 gains a
	// backend, the FWM service goes away.
	next := seedSet()
	next[0].Service.Timeout = 600 * time.Second
	next[2].Destinations = next[2].Destinations[:1]
	next[4].Destinations = append(next[4].Destinations, dest("2001:db8::67", 443, 1))
	next = slices.Delete(next, 3, 4)
	if _, err := r.Sync(ctx, next); err != nil {
		t.Fatal(err)
	}
	wantOps(t, fake.Writes(), `
		update-service tcp:198.18.1.63:0 rr flags=0x1 t=10m0s bits=32
		del-dest tcp:198.18.1.63:80 198.18.1.66:80 w=1 dr
		del-service fwm:8/ipv4
		add-dest tcp:[2001:db8::63]:443 [2001:db8::67]:443 w=1 dr
	`)
	wantTable(t, fake, next)
}

func TestSyncRejectsBadInputWritingNothing(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	fake.ResetWrites()
	bad := seedSet()
	bad[0].Destinations[0].Weight = 70000
	bad = append(bad, bad[1])
	_, err := r.Sync(ctx, bad)
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"nothing written", "service tcp:198.18.1.63:0: destination 198.18.1.65:0: weight 70000", "tcp:198.18.1.63:22 is desired more than once"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if len(fake.Writes()) != 0 {
		t.Fatalf("bad input caused writes:\n%s", opsString(fake.Writes()))
	}
	if _, err := r.SyncService(ctx, bad[0]); err == nil || !strings.Contains(err.Error(), "weight 70000") {
		t.Fatalf("SyncService accepted bad input: %v", err)
	}
}

func TestAdoptRejectsBadInputTouchingNothing(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	bad := seedSet()
	bad[0].Destinations[0].Weight = 70000
	bad = append(bad, bad[1], bad[1])
	bad[2].Destinations = append(bad[2].Destinations, bad[2].Destinations[0])
	_, err := r.Adopt(ctx, bad, nil)
	if err == nil {
		t.Fatal("want an error")
	}
	want := "adopt: invalid desired state: service tcp:198.18.1.63:0: destination 198.18.1.65:0: weight 70000 out of range 0..65535\n" +
		"service tcp:198.18.1.63:80: destination 198.18.1.65:80 listed more than once\n" +
		"service tcp:198.18.1.63:22 is desired more than once\n" +
		"service tcp:198.18.1.63:22 is desired more than once"
	if err.Error() != want {
		t.Errorf("error\n%s\nwant\n%s", err, want)
	}
	if len(fake.Writes()) != 0 || fake.Reads() != (dptest.Reads{}) || len(r.Owned()) != 0 {
		t.Fatalf("bad input touched the kernel or the record: writes %d, reads %+v, owned %d", len(fake.Writes()), fake.Reads(), len(r.Owned()))
	}
}

func TestSyncReorderedDestinationsWritesNothing(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	fake.ResetWrites()
	re := seedSet()
	for i := range re {
		slices.Reverse(re[i].Destinations)
	}
	if _, err := r.Sync(ctx, re); err != nil {
		t.Fatal(err)
	}
	if w := fake.Writes(); len(w) != 0 {
		t.Fatalf("reordering wrote:\n%s", opsString(w))
	}
}

func TestSyncServiceAndRemoveService(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	fake.ResetWrites()
	// Health: one backend of the PPC:80 service goes down (on_failure=remove)
	// and the other is drained.
	ppc := set[2]
	ppc.Destinations = []director.Destination{dest("198.18.1.66", 80, 0)}
	res, err := r.SyncService(ctx, ppc)
	if err != nil {
		t.Fatal(err)
	}
	wantOps(t, fake.Writes(), `
		update-dest tcp:198.18.1.63:80 198.18.1.66:80 w=0 dr
		del-dest tcp:198.18.1.63:80 198.18.1.65:80 w=1 dr
	`)
	if res.Ops[director.OpUpdateDest] != 1 || res.Ops[director.OpDelDest] != 1 {
		t.Fatalf("result %v", res.Ops)
	}
	fake.ResetWrites()
	if _, err := r.SyncService(ctx, ppc); err != nil || len(fake.Writes()) != 0 {
		t.Fatalf("repeat SyncService: err %v, writes %d", err, len(fake.Writes()))
	}
	if _, err := r.RemoveService(ctx, ppc.Service.Key); err != nil {
		t.Fatal(err)
	}
	wantOps(t, fake.Writes(), `del-service tcp:198.18.1.63:80`)
	if slices.Contains(r.Owned(), ppc.Service.Key) {
		t.Fatal("removed service still owned")
	}
	st := r.Stats()
	if st.Ops[director.OpAddService] != 5 || st.Ops[director.OpDelService] != 1 || st.Ops[director.OpUpdateDest] != 1 || st.Owned != 4 || st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// OwnedVersion moves exactly when the owned set changes; Writes matches
// Stats' counters.
func TestOwnedVersionAndWrites(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	set := seedSet()
	v0 := r.OwnedVersion()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	v1 := r.OwnedVersion()
	if v1 == v0 {
		t.Fatal("services added, version unchanged")
	}
	same := func(what string) {
		t.Helper()
		if v := r.OwnedVersion(); v != v1 {
			t.Fatalf("%s changed the version (owned %v)", what, r.Owned())
		}
	}
	changed := func(what string) {
		t.Helper()
		if v := r.OwnedVersion(); v == v1 {
			t.Fatalf("%s left the version unchanged (owned %v)", what, r.Owned())
		}
		v1 = r.OwnedVersion()
	}
	// Weight changes, resyncs and repeats keep the owned set.
	w := set[2]
	w.Destinations = []director.Destination{dest("198.18.1.66", 80, 3)}
	if _, err := r.SyncService(ctx, w); err != nil {
		t.Fatal(err)
	}
	same("a destination change")
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	same("Sync of the same services")
	if _, err := r.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	same("Resync in sync")
	extra := desired(tcpSvc("198.18.1.70", 80), dest("198.18.1.65", 80, 1))
	if _, err := r.SyncService(ctx, extra); err != nil {
		t.Fatal(err)
	}
	changed("adding a service")
	if _, err := r.RemoveService(ctx, extra.Service.Key); err != nil {
		t.Fatal(err)
	}
	changed("removing a service")
	if _, err := r.Sync(ctx, set[1:]); err != nil {
		t.Fatal(err)
	}
	changed("Sync without a service")

	ops, failed := r.Writes()
	st := r.Stats()
	if ops != st.Ops || failed != st.Failed || ops.Total() == 0 {
		t.Fatalf("Writes() = %v, %v; Stats has %v, %v", ops, failed, st.Ops, st.Failed)
	}
}

func TestDriftRepairAfterFlush(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	foreign := desired(tcpSvc("198.18.9.1", 443), dest("198.18.9.2", 443, 1))
	r, logs := newReconciler(t, fake)
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	fake.Flush() // ipvsadm -C
	fake.Put(foreign.Service, foreign.Destinations...)
	fake.ResetWrites()
	res, err := r.Resync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantTable(t, fake, set, foreign)
	if res.Drift != len(set) || res.Ops[director.OpAddService] != 5 || res.Ops[director.OpAddDest] != 9 || res.Pending != 0 {
		t.Fatalf("result %+v", res)
	}
	if n := strings.Count(logs.String(), `msg="ipvs drift repaired"`); n != len(set) {
		t.Fatalf("want one repair line per service, got %d:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), `service=tcp:198.18.1.63:80 drift="service missing from the kernel" repair="add-service, add-dest 198.18.1.65:80, add-dest 198.18.1.66:80"`) {
		t.Fatalf("repair line not as expected:\n%s", logs)
	}
	// Once repaired, a resync writes nothing.
	fake.ResetWrites()
	if res, err := r.Resync(ctx); err != nil || res.Drift != 0 || len(fake.Writes()) != 0 {
		t.Fatalf("second resync: %+v %v writes %d", res, err, len(fake.Writes()))
	}
}

func TestDriftRepairOfDestinationsRoundRobin(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, logs := newReconciler(t, fake, director.WithResyncBatch(2))
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	// By hand: a destination deleted, one re-weighted, one added, a scheduler changed.
	fake.DeleteDest(set[4].Service.Key, set[4].Destinations[0].Key)
	fake.SetDest(set[0].Service.Key, dest("198.18.1.66", 0, 9))
	fake.SetDest(set[1].Service.Key, dest("198.18.1.99", 22, 1))
	changed := set[3].Service
	changed.Scheduler = "wlc"
	fake.Put(changed, set[3].Destinations...)

	// Batch 2 of 5 services: every service's destinations are read within 3 resyncs.
	for i := 0; i < 3; i++ {
		if _, err := r.Resync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wantTable(t, fake, set)
	if r := fake.Reads(); r.Services != 3 || r.Destinations != 6 {
		t.Fatalf("reads %+v: want one service dump and at most 2 destination reads per resync", r)
	}
	for _, want := range []string{
		`drift="destinations changed: [2001:db8::65]:443 missing" repair="add-dest [2001:db8::65]:443"`,
		`drift="destinations changed: 198.18.1.66:0 weight 1 -> 9, dr -> dr, thresholds 0/0 -> 0/0" repair="update-dest 198.18.1.66:0"`,
		`drift="destinations changed: 198.18.1.99:22 unexpected (weight 1)" repair="del-dest 198.18.1.99:22"`,
		`drift="service changed: scheduler \"rr\" -> \"wlc\"" repair=update-service`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s\n%s", want, logs)
		}
	}
}

func TestRetryAfterInjectedError(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	fake.ResetWrites()
	boom := errors.New("injected ENOMEM")
	fake.SetFault(func(op director.Op) error {
		if op.Kind == director.OpUpdateDest {
			return boom
		}
		return nil
	})
	next := seedSet()
	next[2].Destinations[0].Weight = 3
	next[4].Destinations[1].Weight = 0
	next[1].Destinations = append(next[1].Destinations, dest("198.18.1.66", 22, 1))
	res, err := r.Sync(ctx, next)
	if !errors.Is(err, boom) {
		t.Fatalf("want the injected error, got %v", err)
	}
	for _, want := range []string{"2 ipvs writes failed", "update-dest 198.18.1.65:80 (weight 3, dr) in tcp:198.18.1.63:80: fake update-dest: injected ENOMEM"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if res.Failed[director.OpUpdateDest] != 2 || res.Ops[director.OpAddDest] != 1 || res.Pending != 2 {
		t.Fatalf("result %+v", res)
	}
	// The record says the updates did not happen: the next sync of the same
	// state retries exactly them.
	fake.SetFault(nil)
	fake.ResetWrites()
	res, err = r.Sync(ctx, next)
	if err != nil {
		t.Fatal(err)
	}
	wantOps(t, fake.Writes(), `
		update-dest tcp:198.18.1.63:80 198.18.1.65:80 w=3 dr
		update-dest tcp:[2001:db8::63]:443 [2001:db8::66]:443 w=0 dr
	`)
	if res.Pending != 0 || r.Stats().Pending != 0 {
		t.Fatalf("still pending: %+v", res)
	}
	wantTable(t, fake, next)
}

func TestResyncRetriesFailedWrites(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	fake.SetFault(func(op director.Op) error {
		if op.Kind == director.OpAddService && op.Service.Key.FWMark == 8 {
			return syscall.ENOMEM
		}
		return nil
	})
	set := seedSet()
	res, err := r.Sync(ctx, set)
	if !errors.Is(err, syscall.ENOMEM) {
		t.Fatalf("want ENOMEM, got %v", err)
	}
	// The fwmark service's destinations were skipped, not reported as drift.
	if res.Failed[director.OpAddService] != 1 || res.Failed[director.OpAddDest] != 2 || res.Drift != 0 || !strings.HasPrefix(err.Error(), "1 ipvs writes failed: add-service fwm:8/ipv4") {
		t.Fatalf("result %+v err %v", res, err)
	}
	fake.SetFault(nil)
	if _, err := r.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	wantTable(t, fake, set)
}

func TestKernelAnswersCorrectTheRecord(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, logs := newReconciler(t, fake)
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}

	t.Run("service deleted behind our back", func(t *testing.T) {
		fake.DeleteService(set[2].Service.Key)
		next := set[2]
		next.Destinations = slices.Clone(next.Destinations)
		next.Destinations[0].Weight = 4
		res, err := r.SyncService(ctx, next)
		if err != nil {
			t.Fatal(err)
		}
		if res.Drift != 1 || res.Pending != 0 {
			t.Fatalf("result %+v", res)
		}
		set[2] = next
		wantTable(t, fake, set)
	})
	t.Run("service created behind our back", func(t *testing.T) {
		extra := desired(tcpSvc("198.18.1.80", 80), dest("198.18.1.65", 80, 1), dest("198.18.1.66", 80, 1))
		sneaky := extra.Service
		sneaky.Scheduler = "lc"
		fake.Put(sneaky, dest("198.18.1.65", 80, 5))
		res, err := r.SyncService(ctx, extra)
		if err != nil {
			t.Fatal(err)
		}
		if res.Drift != 2 || res.Pending != 0 {
			t.Fatalf("result %+v", res)
		}
		set = append(set, extra)
		wantTable(t, fake, set)
		if !strings.Contains(logs.String(), `drift="kernel answers differed from the record" repair="add-service (EEXIST), add-dest 198.18.1.65:80 (EEXIST), add-dest 198.18.1.66:80; then update-service, update-dest 198.18.1.65:80"`) {
			t.Fatalf("log:\n%s", logs)
		}
	})
	t.Run("destination deleted behind our back", func(t *testing.T) {
		fake.DeleteDest(set[0].Service.Key, set[0].Destinations[0].Key)
		next := set[0]
		next.Destinations = slices.Clone(next.Destinations)
		next.Destinations[0].Weight = 2
		if _, err := r.SyncService(ctx, next); err != nil {
			t.Fatal(err)
		}
		set[0] = next
		wantTable(t, fake, set)
	})
	t.Run("removing a service already gone", func(t *testing.T) {
		fake.DeleteService(set[1].Service.Key)
		if _, err := r.RemoveService(ctx, set[1].Service.Key); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(r.Owned(), set[1].Service.Key) {
			t.Fatal("still owned")
		}
	})
}

func TestContextCancelled(t *testing.T) {
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Sync(ctx, seedSet()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sync: %v", err)
	}
	if _, err := r.SyncService(ctx, seedSet()[0]); !errors.Is(err, context.Canceled) {
		t.Fatalf("SyncService: %v", err)
	}
	if _, err := r.Resync(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Resync: %v", err)
	}
	if _, err := r.Adopt(ctx, seedSet(), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Adopt: %v", err)
	}
	if len(fake.Writes()) != 0 {
		t.Fatal("wrote with a cancelled context")
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake, director.WithResyncBatch(3))
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range set {
		wg.Go(func() {
			for i := range 50 {
				d := set[g]
				d.Destinations = slices.Clone(d.Destinations)
				d.Destinations[0].Weight = 10 + i%3
				if _, err := r.SyncService(ctx, d); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 30 {
			if _, err := r.Resync(ctx); err != nil {
				t.Error(err)
				return
			}
			_ = r.Stats()
			_ = r.Owned()
		}
	})
	wg.Go(func() {
		for range 10 {
			fake.DeleteDest(set[0].Service.Key, set[0].Destinations[1].Key)
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
	// Converged: after a resync or two the kernel equals the last desired state.
	final := seedSet()
	for i := range final {
		final[i].Destinations[0].Weight = 10 + 49%3
	}
	for range 3 {
		if _, err := r.Resync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wantTable(t, fake, final)
}

func TestSyncDoesNotKeepCallerSlices(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	set[0].Destinations[0].Weight = 42 // caller reuses its slice
	fake.ResetWrites()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	wantOps(t, fake.Writes(), `update-dest tcp:198.18.1.63:0 198.18.1.65:0 w=42 dr`)
}

// A table larger than one Apply call's chunk is written in key order, in
// chunks, with failures and kernel answers recorded against the right
// services, and the drift they reveal repaired in a second round.
func TestLargeSyncInChunks(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	set := bigSet(3000, 10) // 33,000 writes: several chunks
	failed, sneaky := set[1500].Service.Key, set[2900]
	lc := sneaky.Service
	lc.Scheduler = "lc"
	fake.Put(lc, director.Destination{Key: sneaky.Destinations[0].Key, Weight: 5, Forward: director.ForwardDR})
	fake.ResetWrites()
	fake.SetFault(func(op director.Op) error {
		if op.Kind == director.OpAddService && op.Service.Key == failed {
			return syscall.ENOMEM
		}
		return nil
	})
	res, err := r.Sync(ctx, set)
	if !errors.Is(err, syscall.ENOMEM) || !strings.HasPrefix(err.Error(), "1 ipvs writes failed: add-service "+failed.String()) {
		t.Fatalf("want one ENOMEM, got %v", err)
	}
	var want director.Result
	want.Ops[director.OpAddService] = 2998
	want.Ops[director.OpUpdateService] = 1
	want.Ops[director.OpAddDest] = 30000 - 10 - 1
	want.Ops[director.OpUpdateDest] = 1
	want.Failed[director.OpAddService] = 1
	want.Failed[director.OpAddDest] = 10
	want.Drift, want.Pending = 2, 1
	if res != want {
		t.Fatalf("result\n got %+v\nwant %+v", res, want)
	}
	first, err := director.Diff(set, nil)
	if err != nil {
		t.Fatal(err)
	}
	writes := fake.Writes()
	if len(writes) != len(first)+2 {
		t.Fatalf("%d writes, want %d", len(writes), len(first)+2)
	}
	wantOps(t, writes[:len(first)], opsString(first))
	wantOps(t, writes[len(first):], `
		update-service tcp:198.18.11.84:80 rr flags=0x0 t=0s bits=32
		update-dest tcp:198.18.11.84:80 198.19.0.150:80 w=1 dr
	`)
	fake.SetFault(nil)
	fake.ResetWrites()
	if res, err := r.Sync(ctx, set); err != nil || res.Ops.Total() != 11 || res.Pending != 0 {
		t.Fatalf("retry: %+v, %v", res, err)
	}
	wantTable(t, fake, set)
}

// bigSet builds n services × m destinations.
func bigSet(n, m int) []director.DesiredService {
	set := make([]director.DesiredService, n)
	for i := range set {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		svc := tcpSvc(a.String(), 80)
		ds := make([]director.Destination, m)
		for j := range ds {
			ds[j] = director.Destination{
				Key:     director.DestKey{Address: netip.AddrFrom4([4]byte{198, 19, byte(j), byte(i % 250)}), Port: 80},
				Weight:  1,
				Forward: director.ForwardDR,
			}
		}
		set[i] = director.DesiredService{Service: svc, Destinations: ds}
	}
	return set
}

func BenchmarkSyncOneWeightChange10k(b *testing.B) {
	ctx := context.Background()
	fake := dptest.New()
	fake.RecordWrites(false)
	r := director.New(fake, nil)
	set := bigSet(10000, 10)
	if _, err := r.Sync(ctx, set); err != nil {
		b.Fatal(err)
	}
	var writes uint64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		set[5000].Destinations[3].Weight = 2 + i%2
		res, err := r.Sync(ctx, set)
		if err != nil {
			b.Fatal(err)
		}
		writes += res.Ops.Total()
	}
	b.ReportMetric(float64(writes)/float64(b.N), "writes/op")
}

func BenchmarkInitialSync10k(b *testing.B) {
	ctx := context.Background()
	set := bigSet(10000, 10)
	var writes uint64
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		fake := dptest.New()
		fake.RecordWrites(false)
		r := director.New(fake, nil)
		b.StartTimer()
		res, err := r.Sync(ctx, set)
		if err != nil {
			b.Fatal(err)
		}
		writes += res.Ops.Total()
	}
	b.ReportMetric(float64(writes)/float64(b.N), "writes/op")
}

// BenchmarkAdoptEmpty10k is lvsd's start on an empty kernel: adopting
// nothing and writing 10,000 services × 10 destinations.
func BenchmarkAdoptEmpty10k(b *testing.B) {
	ctx := context.Background()
	set := bigSet(10000, 10)
	var writes uint64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		fake := dptest.New()
		fake.RecordWrites(false)
		r := director.New(fake, nil)
		b.StartTimer()
		res, err := r.Adopt(ctx, set, nil)
		if err != nil {
			b.Fatal(err)
		}
		writes += res.Ops.Total()
	}
	b.ReportMetric(float64(writes)/float64(b.N), "writes/op")
}

func BenchmarkSyncInSync10k(b *testing.B) {
	ctx := context.Background()
	fake := dptest.New()
	fake.RecordWrites(false)
	r := director.New(fake, nil)
	set := bigSet(10000, 10)
	if _, err := r.Sync(ctx, set); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if res, err := r.Sync(ctx, set); err != nil || res.Ops.Total() != 0 {
			b.Fatal(res, err)
		}
	}
}

// TestAdoptWriteFailureIsAWriteError: at start, a service the kernel
// refuses (a scheduler module missing) fails as a WriteError — everything
// else is written, the record matches the kernel, the service stays
// pending — so the caller can run on, and a resync writes it later.
func TestAdoptWriteFailureIsAWriteError(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, _ := newReconciler(t, fake)
	set := seedSet()
	bad := set[1].Service.Key
	fake.SetFault(func(op director.Op) error {
		if op.Kind == director.OpAddService && op.Service.Key == bad {
			return syscall.ENOENT // what the kernel answers for an unknown scheduler
		}
		return nil
	})
	res, err := r.Adopt(ctx, set, nil)
	var werr *director.WriteError
	if !errors.As(err, &werr) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("adopt: %v, want a WriteError wrapping ENOENT", err)
	}
	if res.Pending != 1 || res.Failed[director.OpAddService] != 1 {
		t.Fatalf("result %+v, want one failed add-service and one service pending", res)
	}
	var others []director.DesiredService
	for _, d := range set {
		if d.Service.Key != bad {
			others = append(others, d)
		}
	}
	wantTable(t, fake, others)
	fake.SetFault(nil)
	if _, err := r.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	wantTable(t, fake, set)
	// A failed read is not a WriteError: nothing was written.
	fake.FailReads(syscall.EIO)
	if _, err := r.Adopt(ctx, set, nil); err == nil || errors.As(err, &werr) {
		t.Fatalf("adopt with a failed read: %v, want an error that is not a WriteError", err)
	}
}

// TestDumpThatSkipsAServiceChangesNothing: a kernel dump can skip a service
// when another namespace changes the shared table meanwhile. Resync asks
// before calling one of ours missing (no re-add, no drift), and Adopt still
// deletes an orphan it owned that the dump skipped.
func TestDumpThatSkipsAServiceChangesNothing(t *testing.T) {
	ctx := context.Background()
	fake := dptest.New()
	r, logs := newReconciler(t, fake)
	set := seedSet()
	if _, err := r.Sync(ctx, set); err != nil {
		t.Fatal(err)
	}
	skipped := set[2].Service.Key
	fake.SkipInDump(func(k director.ServiceKey) bool { return k == skipped })
	fake.ResetWrites()
	res, err := r.Resync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w := fake.Writes(); len(w) != 0 || res.Drift != 0 {
		t.Fatalf("resync over a dump that skipped %s: drift %d, wrote:\n%s", skipped, res.Drift, opsString(w))
	}
	if strings.Contains(logs.String(), "missing from the kernel") {
		t.Errorf("a skipped service was reported missing:\n%s", logs)
	}
	// A new run owning all of set, now wanting all but the skipped one.
	r2, _ := newReconciler(t, fake)
	var keys []director.ServiceKey
	for _, d := range set {
		keys = append(keys, d.Service.Key)
	}
	var rest []director.DesiredService
	for _, d := range set {
		if d.Service.Key != skipped {
			rest = append(rest, d)
		}
	}
	if _, err := r2.Adopt(ctx, rest, keys); err != nil {
		t.Fatal(err)
	}
	fake.SkipInDump(nil)
	wantTable(t, fake, rest)
}
