package ipvsdp

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/ipvsnl"
	"golang.org/x/sys/unix"
)

// fakeClient records the ops it is given and fails chosen ones the way
// ipvsnl does: an *ipvsnl.OpError per failed op, indexed within the call.
type fakeClient struct {
	client // unused methods panic
	calls  [][]ipvsnl.Op
	fail   map[string]error // by op description
}

func (f *fakeClient) Apply(_ context.Context, ops []ipvsnl.Op) []error {
	f.calls = append(f.calls, append([]ipvsnl.Op(nil), ops...))
	var errs []error
	for i, op := range ops {
		if err := f.fail[op.String()]; err != nil {
			if errs == nil {
				errs = make([]error, len(ops))
			}
			errs[i] = &ipvsnl.OpError{Index: i, Op: op, Err: err}
		}
	}
	return errs
}

func TestApplyChunksAndMapsErrors(t *testing.T) {
	var ops []director.Op
	s := pcc()
	for range applyChunk + 100 {
		s.Key.Address = s.Key.Address.Next()
		ops = append(ops, director.Op{Kind: director.OpAddService, Service: s})
	}
	bad := applyChunk + 7                     // fails in the kernel, in the second chunk
	ops[3].Service.Timeout = time.Millisecond // fails conversion, never sent
	nl, err := toNLOp(ops[bad])
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeClient{fail: map[string]error{nl.String(): &ipvsnl.KernelError{Errno: unix.EEXIST}}}
	dp := &Dataplane{log: slog.New(slog.DiscardHandler), writer: f, reader: f}

	errs := dp.Apply(context.Background(), ops)
	if len(errs) != len(ops) {
		t.Fatalf("%d errors for %d ops", len(errs), len(ops))
	}
	for i, err := range errs {
		switch i {
		case 3:
			if err == nil || !strings.Contains(err.Error(), "whole number of seconds") {
				t.Errorf("op 3: %v", err)
			}
		case bad:
			if !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), ops[bad].String()) || strings.Contains(err.Error(), "ipvsnl: op") {
				t.Errorf("op %d: %v; want EEXIST naming the director op, without ipvsnl's index", i, err)
			}
		default:
			if err != nil {
				t.Errorf("op %d: %v", i, err)
			}
		}
	}
	if len(f.calls) != 2 || len(f.calls[0]) != applyChunk-1 || len(f.calls[1]) != 100 {
		lens := []int{}
		for _, c := range f.calls {
			lens = append(lens, len(c))
		}
		t.Errorf("chunks %v, want [%d 100]", lens, applyChunk-1)
	}
	if errs := dp.Apply(context.Background(), ops[:2]); errs != nil {
		t.Errorf("clean ops: %v", errs)
	}
	if errs := dp.Apply(context.Background(), nil); errs != nil || len(f.calls) != 3 {
		t.Errorf("no ops: %v, %d calls", errs, len(f.calls))
	}
}

// syncFake keeps a daemon list like the kernel.
type syncFake struct {
	fakeClient
	running []ipvsnl.SyncDaemon
	stops   []time.Time
}

func (f *syncFake) Daemons(context.Context) ([]ipvsnl.SyncDaemon, error) {
	return append([]ipvsnl.SyncDaemon(nil), f.running...), nil
}

func (f *syncFake) StartDaemon(_ context.Context, d ipvsnl.SyncDaemon) error {
	f.running = append(f.running, d)
	return nil
}

func (f *syncFake) StopDaemon(_ context.Context, s ipvsnl.DaemonState) error {
	f.stops = append(f.stops, time.Now())
	for i, d := range f.running {
		if d.State == s {
			f.running = append(f.running[:i], f.running[i+1:]...)
			return nil
		}
	}
	return &ipvsnl.KernelError{Errno: unix.ESRCH}
}

func TestSetSyncSettlesBeforeStopping(t *testing.T) {
	f := &syncFake{}
	dp := &Dataplane{log: slog.New(slog.DiscardHandler), writer: f, reader: f, syncStarted: map[ipvsnl.DaemonState]time.Time{}}
	master := SyncDaemon{State: SyncMaster, Interface: "eth0", SyncID: 1}
	start := time.Now()
	if err := dp.SetSync(context.Background(), []SyncDaemon{master}); err != nil {
		t.Fatal(err)
	}
	// A stop right away is held back until the daemon has run syncSettle.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := dp.SetSync(ctx, nil); !errors.Is(err, context.Canceled) || len(f.stops) != 0 {
		t.Fatalf("cancelled early stop: %v, %d stops", err, len(f.stops))
	}
	if err := dp.SetSync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if len(f.stops) != 1 || f.stops[0].Sub(start) < syncSettle || len(f.running) != 0 {
		t.Fatalf("stops %v (started %v), running %v", f.stops, start, f.running)
	}
	// A daemon this Dataplane did not start is stopped at once.
	f.running = []ipvsnl.SyncDaemon{{State: SyncBackup, Interface: "eth0"}}
	t0 := time.Now()
	if err := dp.SetSync(context.Background(), nil); err != nil || time.Since(t0) > syncSettle/2 || len(f.running) != 0 {
		t.Fatalf("foreign backup: %v after %s, running %v", err, time.Since(t0), f.running)
	}
}
