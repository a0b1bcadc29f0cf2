package healthcheck

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTCPCheck is one TCP check against a loopback listener, client
// and server in this process (so cpu-µs/op counts the accept side too).
func BenchmarkTCPCheck(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	// Two acceptors, and a timeout that outlasts a SYN retransmission (1 s):
	// on a busy host the accept queue can overflow, and a dropped SYN says
	// nothing about the checker.
	go acceptForever(ln, nil)
	go acceptForever(ln, nil)
	tg := Target{Addr: netip.MustParseAddr("127.0.0.1"), Port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	c, err := New(Spec{Type: TypeTCP, Interval: 10 * time.Second, Timeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		if r := c.Check(ctx, tg); !r.OK {
			b.Fatal(r.Reason)
		}
	}
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

type nopChecker struct{}

func (nopChecker) Check(context.Context, Target) Result { return Result{OK: true, Weight: NoWeight} }

// BenchmarkMonitorOverhead measures the scheduler's own cost per check:
// 10,000 checks of a checker that does nothing, every 100 ms (100,000
// checks/s), for b.N × 100 ms. cpu-µs/check is what the monitor adds to
// each real check.
func BenchmarkMonitorOverhead(b *testing.B) {
	m := NewMonitor(Options{NewChecker: func(Spec) (Checker, error) { return nopChecker{}, nil }})
	defer m.Close()
	checks := make([]Check, 10000)
	for i := range checks {
		checks[i] = Check{
			Key:  Key{"bench", netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 10, byte(i / 256), byte(i)}), 80)},
			Spec: Spec{Type: TypeTCP, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, InitialDelay: 100 * time.Millisecond},
		}
	}
	if err := m.Update(checks); err != nil {
		b.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	b.ResetTimer()
	c0, cpu0 := m.ChecksRun(), processCPU()
	for range b.N {
		time.Sleep(100 * time.Millisecond)
	}
	n := m.ChecksRun() - c0
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/1e3/float64(n), "cpu-µs/check")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "checks/s")
}
