package ipvsnl

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func tcpService(i int) Service {
	return Service{
		Family: AFInet, Protocol: ProtoTCP,
		Address:   netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}),
		Port:      80,
		Scheduler: "rr", Netmask: 0xFFFFFFFF,
	}
}

func routeDest(i int) Destination {
	return Destination{Address: netip.AddrFrom4([4]byte{198, 19, 0, byte(i)}), Port: 80, Forward: ForwardRoute, Weight: 1}
}

// tableOps programs n services with d destinations each.
func tableOps(n, d int) []Op {
	var ops []Op
	for i := range n {
		s := tcpService(i)
		ops = append(ops, Op{Cmd: CmdNewService, Service: s})
		for j := range d {
			ops = append(ops, Op{Cmd: CmdNewDest, Service: s, Dest: routeDest(j)})
		}
	}
	return ops
}

func TestApplyBatchesAllOps(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client(100)
	ops := tableOps(50, 9) // 500 ops
	if errs := c.Apply(context.Background(), ops); errs != nil {
		t.Fatalf("Apply: %v", errors.Join(errs...))
	}
	if k.sends != 5 {
		t.Errorf("sendmsg calls = %d, want 5 batches of 100", k.sends)
	}
	if k.replies != 5 {
		t.Errorf("%d replies, want one per batch (only the last request asks for an ack)", k.replies)
	}
	if len(k.services) != 50 || k.destCount() != 450 {
		t.Errorf("kernel has %d services, %d dests; want 50, 450", len(k.services), k.destCount())
	}
}

func TestApplyPerOpErrors(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client(1000)
	ops := tableOps(3, 2) // s0 d0 d1 s1 d0 d1 s2 d0 d1
	ops = append(ops,
		Op{Cmd: CmdNewDest, Service: tcpService(1), Dest: routeDest(0)},                                                                  // 9: duplicate
		Op{Cmd: CmdSetDest, Service: tcpService(7), Dest: routeDest(0)},                                                                  // 10: no such service
		Op{Cmd: CmdNewDest, Service: tcpService(2), Dest: Destination{Address: netip.MustParseAddr("198.19.0.9"), Port: 80, Weight: -1}}, // 11: invalid, never sent
		Op{Cmd: CmdDelDest, Service: tcpService(0), Dest: routeDest(1)},                                                                  // 12: fine
	)
	k.failNth[5] = unix.EINVAL // the kernel refuses s1/d1

	errs := c.Apply(context.Background(), ops)
	if len(errs) != len(ops) {
		t.Fatalf("got %d errors for %d ops", len(errs), len(ops))
	}
	want := map[int]error{5: unix.EINVAL, 9: unix.EEXIST, 10: unix.ESRCH}
	for i, err := range errs {
		switch {
		case i == 11:
			if err == nil || !strings.Contains(err.Error(), "weight -1 is negative") || !strings.Contains(err.Error(), "op 11") {
				t.Errorf("op 11: error %v, want a validation error naming the op and the weight", err)
			}
		case want[i] != nil:
			if !errors.Is(err, want[i]) {
				t.Errorf("op %d: error %v, want %v", i, err, want[i])
			}
		case err != nil:
			t.Errorf("op %d: unexpected error %v", i, err)
		}
	}
	if len(k.requests) != len(ops)-1 {
		t.Errorf("kernel saw %d requests, want %d (the invalid op is not sent)", len(k.requests), len(ops)-1)
	}
	if !strings.Contains(errs[10].Error(), "no such service") {
		t.Errorf("op 10 error lacks the ESRCH hint: %v", errs[10])
	}
	var kerr *KernelError
	if !errors.As(errs[9], &kerr) || kerr.Errno != unix.EEXIST {
		t.Errorf("op 9 error %v does not unwrap to a KernelError EEXIST", errs[9])
	}
	if k.destCount() != 6-1-1 { // 6 added, one refused, one deleted
		t.Errorf("kernel has %d dests, want 4", k.destCount())
	}
}

func TestApplyIgnoresStaleAcks(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client(10)
	// Acks of an earlier exchange, one of them an error, still queued.
	k.queue = append(k.queue, ack(c.message(1, nil, 0), unix.EEXIST))
	k.queue[0].Header.Sequence = 999999
	ops := tableOps(2, 3)
	if errs := c.Apply(context.Background(), ops); errs != nil {
		t.Fatalf("Apply: %v", errors.Join(errs...))
	}
	if k.destCount() != 6 {
		t.Errorf("kernel has %d dests, want 6", k.destCount())
	}
}

func TestApplyOverrunReissuesIdempotently(t *testing.T) {
	k := newFakeKernel(t)
	k.ackCap = 30
	c := k.client(100)
	c.ackEach = true
	ops := tableOps(10, 9) // 100 ops in one batch; acks 30.. are dropped
	errs := c.Apply(context.Background(), ops)
	if errs != nil {
		t.Fatalf("Apply after overrun: %v", errors.Join(errs...))
	}
	if len(k.services) != 10 || k.destCount() != 90 {
		t.Errorf("kernel has %d services, %d dests; want 10, 90", len(k.services), k.destCount())
	}
	// Every lost op was re-issued, found present, and turned into a set.
	var sets int
	for _, cmd := range k.requests[100:] {
		if Command(cmd) == CmdSetService || Command(cmd) == CmdSetDest {
			sets++
		}
	}
	if sets != 70 {
		t.Errorf("%d sets after the overrun, want 70 (one per lost add)", sets)
	}
	if got := c.BatchSize(); got != 50 {
		t.Errorf("batch size after overrun = %d, want 50", got)
	}
}

func TestApplyOverrunLeavesConflictingOpsUnknown(t *testing.T) {
	k := newFakeKernel(t)
	k.ackCap = 1
	c := k.client(100)
	c.ackEach = true
	s := tcpService(1)
	ops := []Op{
		{Cmd: CmdNewService, Service: s},
		{Cmd: CmdNewDest, Service: s, Dest: routeDest(1)}, // lost; a later op deletes the same dest
		{Cmd: CmdDelDest, Service: s, Dest: routeDest(1)}, // lost; last on its object: re-issued
		{Cmd: CmdNewDest, Service: s, Dest: routeDest(2)}, // lost: re-issued, EEXIST → set
	}
	errs := c.Apply(context.Background(), ops)
	if errs == nil {
		t.Fatal("Apply reported success for an op of unknown outcome")
	}
	if !errors.Is(errs[1], ErrAckLost) {
		t.Errorf("op 1: %v, want ErrAckLost", errs[1])
	}
	for _, i := range []int{0, 2, 3} {
		if errs[i] != nil {
			t.Errorf("op %d: %v, want nil", i, errs[i])
		}
	}
}

func TestApplyAckEach(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client(100)
	c.ackEach = true
	ops := tableOps(10, 4)
	ops = append(ops, Op{Cmd: CmdNewService, Service: tcpService(3)}) // EEXIST
	errs := c.Apply(context.Background(), ops)
	if len(errs) != len(ops) || !errors.Is(errs[50], unix.EEXIST) || errors.Join(errs[:50]...) != nil {
		t.Fatalf("errors %v", errs)
	}
	if k.replies != len(ops) {
		t.Errorf("%d replies, want one per request", k.replies)
	}
}

// With only the last request acknowledged, a burst of errors can still
// overrun the socket; the unanswered requests are then re-issued.
func TestApplyOverrunOfErrors(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client(1000)
	s := tcpService(1)
	ops := []Op{{Cmd: CmdNewService, Service: s}}
	for i := range 50 {
		ops = append(ops, Op{Cmd: CmdNewDest, Service: s, Dest: routeDest(i)})
	}
	if errs := c.Apply(context.Background(), ops); errs != nil {
		t.Fatal(errors.Join(errs...))
	}
	// Every dest again, weight 2: all 50 fail with EEXIST, and only 10
	// answers fit in the socket.
	k.ackCap = 10
	for i := range ops[1:] {
		ops[i+1].Dest.Weight = 2
	}
	errs := c.Apply(context.Background(), ops[1:])
	var exist int
	for _, err := range errs {
		if errors.Is(err, unix.EEXIST) {
			exist++
		} else if err != nil {
			t.Errorf("unexpected %v", err)
		}
	}
	// The 10 answered ones failed; the 40 lost ones were re-issued, found
	// present and set.
	if exist != 10 {
		t.Errorf("%d EEXIST, want the 10 answered", exist)
	}
	var w2 int
	for _, d := range k.dests[keyOf(s)] {
		if d.Weight == 2 {
			w2++
		}
	}
	if w2 != 40 {
		t.Errorf("%d destinations at weight 2, want the 40 re-issued", w2)
	}
}

func TestApplyNoAcks(t *testing.T) {
	k := newFakeKernel(t)
	k.silent = true
	c := k.client(10)
	ops := tableOps(2, 2)
	errs := c.Apply(context.Background(), ops)
	if len(errs) != len(ops) {
		t.Fatalf("errors %v", errs)
	}
	for i, err := range errs {
		if !errors.Is(err, ErrAckLost) {
			t.Errorf("op %d: %v, want ErrAckLost", i, err)
		}
	}
	if k.reopens == 0 {
		t.Error("the socket with missing replies was not replaced")
	}
	// The kernel did apply them: the outcome really was unknown.
	if len(k.services) != 2 || k.destCount() != 4 {
		t.Errorf("fake kernel has %d services, %d dests", len(k.services), k.destCount())
	}
}

func TestApplyCancelled(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client(10)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	errs := c.Apply(ctx, tableOps(1, 1))
	if len(errs) != 2 || !errors.Is(errs[0], context.Canceled) || !errors.Is(errs[1], context.Canceled) {
		t.Fatalf("errors %v, want context.Canceled for both ops", errs)
	}
	if k.sends != 0 {
		t.Errorf("%d sendmsg calls after cancellation", k.sends)
	}
}

func TestApplyEmpty(t *testing.T) {
	k := newFakeKernel(t)
	if errs := k.client(10).Apply(context.Background(), nil); errs != nil {
		t.Fatalf("Apply(nil) = %v", errs)
	}
	if k.sends != 0 {
		t.Errorf("%d sendmsg calls for no ops", k.sends)
	}
}

func TestClosedClient(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client(10)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	errs := c.Apply(context.Background(), tableOps(1, 0))
	if len(errs) != 1 || !errors.Is(errs[0], errClosed) {
		t.Errorf("Apply on a closed client: %v", errs)
	}
	if _, err := c.Services(context.Background()); !errors.Is(err, errClosed) {
		t.Errorf("Services on a closed client: %v", err)
	}
}

func TestBatchBytesBound(t *testing.T) {
	k := newFakeKernel(t)
	c := k.client(100000)
	ops := tableOps(1, 0)
	for i := range 5000 {
		ops = append(ops, Op{Cmd: CmdNewDest, Service: tcpService(0), Dest: Destination{
			Address: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), Port: 80, Forward: ForwardRoute, Weight: 1}})
	}
	if errs := c.Apply(context.Background(), ops); errs != nil {
		t.Fatalf("Apply: %v", errors.Join(errs...))
	}
	// Each dest request is about 100 bytes: 5001 of them need 2+ sends.
	if k.sends < 2 {
		t.Errorf("%d sendmsg calls for ~500 KB of requests; the byte bound did not split them", k.sends)
	}
	if k.destCount() != 5000 {
		t.Errorf("kernel has %d dests, want 5000", k.destCount())
	}
}

// BenchmarkApplyClientSide measures ipvsnl's own cost per op (encoding,
// batching, ack matching) against the in-memory fake kernel.
func BenchmarkApplyClientSide(b *testing.B) {
	ops := tableOps(1000, 10)
	b.ReportAllocs()
	for b.Loop() {
		k := newFakeKernel(&testing.T{})
		k.ackOnly = true
		c := k.client(1000)
		c.log = slog.New(slog.DiscardHandler)
		if errs := c.Apply(context.Background(), ops); errs != nil {
			b.Fatal(errors.Join(errs...))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ops)), "ns/op-object")
}
