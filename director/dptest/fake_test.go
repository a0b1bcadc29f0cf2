package dptest

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
)

var (
	svc = director.Service{
		Key:       director.ServiceKey{Family: director.IPv4, Protocol: director.TCP, Address: netip.MustParseAddr("198.18.1.100"), Port: 80},
		Scheduler: "rr", Flags: director.FlagPersistent, Timeout: 360 * time.Second, PersistenceBits: 32,
	}
	d1 = director.Destination{Key: director.DestKey{Address: netip.MustParseAddr("198.18.2.1"), Port: 80}, Weight: 1, Forward: director.ForwardDR}
	d2 = director.Destination{Key: director.DestKey{Address: netip.MustParseAddr("198.18.2.2"), Port: 80}, Weight: 1, Forward: director.ForwardDR}
)

func op(kind director.OpKind, s director.Service, d director.Destination) director.Op {
	return director.Op{Kind: kind, Service: s, Dest: d}
}

func TestKernelLikeErrors(t *testing.T) {
	ctx := context.Background()
	f := New()
	fwm := director.Service{Key: director.ServiceKey{Family: director.IPv4, FWMark: 8}, Scheduler: "rr", PersistenceBits: 32}
	fwm6 := fwm
	fwm6.Key.Family = director.IPv6
	fwm6.PersistenceBits = 128
	ops := []director.Op{
		op(director.OpAddDest, svc, d1),                                            // ESRCH: no service yet
		op(director.OpAddService, svc, d1),                                         // ok
		op(director.OpAddService, svc, d1),                                         // EEXIST
		op(director.OpAddDest, svc, d1),                                            // ok
		op(director.OpAddDest, svc, d1),                                            // EEXIST
		op(director.OpUpdateDest, svc, d2),                                         // ENOENT
		op(director.OpDelDest, svc, d2),                                            // ENOENT
		op(director.OpUpdateService, fwm, d1),                                      // ESRCH
		op(director.OpAddService, fwm, d1),                                         // ok
		op(director.OpAddService, fwm6, d1),                                        // ok: same mark, other family
		op(director.OpAddDest, svc, director.Destination{Key: d2.Key, Weight: -1}), // EINVAL
	}
	errs := f.Apply(ctx, ops)
	want := []error{syscall.ESRCH, nil, syscall.EEXIST, nil, syscall.EEXIST, syscall.ENOENT, syscall.ENOENT, syscall.ESRCH, nil, nil, syscall.EINVAL}
	if len(errs) != len(ops) {
		t.Fatalf("got %d results for %d ops", len(errs), len(ops))
	}
	for i := range want {
		if (want[i] == nil) != (errs[i] == nil) || want[i] != nil && !errors.Is(errs[i], want[i]) {
			t.Errorf("op %d %s: got %v, want %v", i, ops[i], errs[i], want[i])
		}
	}
	if n := len(f.Writes()); n != len(ops) {
		t.Fatalf("recorded %d writes, want %d (failed ones included)", n, len(ops))
	}
	if errs := f.Apply(ctx, ops[1:2]); errs == nil {
		t.Fatal("want EEXIST")
	}
	if errs := f.Apply(ctx, []director.Op{op(director.OpUpdateDest, svc, d1)}); errs != nil {
		t.Fatalf("all ok must return nil, got %v", errs)
	}
}

func TestDeletingServiceDeletesDestinations(t *testing.T) {
	ctx := context.Background()
	f := New()
	f.Put(svc, d1, d2)
	if errs := f.Apply(ctx, []director.Op{op(director.OpDelService, svc, director.Destination{})}); errs != nil {
		t.Fatal(errs)
	}
	if _, err := f.Destinations(ctx, svc.Key); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("want ESRCH, got %v", err)
	}
	// Re-adding starts empty.
	if errs := f.Apply(ctx, []director.Op{op(director.OpAddService, svc, director.Destination{})}); errs != nil {
		t.Fatal(errs)
	}
	if ds, err := f.Destinations(ctx, svc.Key); err != nil || len(ds) != 0 {
		t.Fatalf("destinations survived: %v %v", ds, err)
	}
}

func TestReadBackSetsHashedAndWholeSeconds(t *testing.T) {
	f := New()
	s := svc
	s.Timeout = 360*time.Second + 400*time.Millisecond
	f.Put(s)
	got, err := f.Services(context.Background())
	if err != nil || len(got) != 1 {
		t.Fatal(got, err)
	}
	if got[0].Flags != director.FlagPersistent|director.FlagHashed || got[0].Timeout != 360*time.Second {
		t.Fatalf("read back %+v", got[0])
	}
	if tab := f.Table(); tab[0].Service.Flags&director.FlagHashed != 0 {
		t.Fatal("Table must clear FlagHashed")
	}
}

func TestDriftHelpersAndFaults(t *testing.T) {
	ctx := context.Background()
	f := New()
	f.Put(svc, d1)
	if !f.SetDest(svc.Key, d2) || !f.DeleteDest(svc.Key, d1.Key) || f.DeleteDest(svc.Key, d1.Key) {
		t.Fatal("dest helpers misreport")
	}
	if ds, _ := f.Destinations(ctx, svc.Key); len(ds) != 1 || ds[0] != d2 {
		t.Fatalf("destinations %v", ds)
	}
	f.Flush()
	if ss, _ := f.Services(ctx); len(ss) != 0 || f.DeleteService(svc.Key) {
		t.Fatal("flush left services")
	}
	boom := errors.New("boom")
	f.SetFault(func(o director.Op) error {
		if o.Kind == director.OpAddService {
			return boom
		}
		return nil
	})
	errs := f.Apply(ctx, []director.Op{op(director.OpAddService, svc, d1), op(director.OpAddDest, svc, d1)})
	if !errors.Is(errs[0], boom) || !errors.Is(errs[1], syscall.ESRCH) {
		t.Fatalf("errs %v", errs)
	}
	f.FailReads(boom)
	if _, err := f.Services(ctx); !errors.Is(err, boom) {
		t.Fatalf("want read failure, got %v", err)
	}
	if r := f.Reads(); r.Services != 2 || r.Destinations != 1 {
		t.Fatalf("reads %+v", r)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	f.SetFault(nil)
	if errs := f.Apply(cctx, []director.Op{op(director.OpAddService, svc, d1)}); !errors.Is(errs[0], context.Canceled) {
		t.Fatalf("cancelled apply: %v", errs)
	}
}
