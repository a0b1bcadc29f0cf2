// Command health benchmarks lvsd's health checking: N backends (TCP or HTTP
// listeners on distinct 127.0.0.0/8 addresses, served by a child process)
// checked every interval for a fixed time, inside a private network
// namespace. It prints checks/s achieved (as counted by the checker and by
// the backends), CPU as % of one core, and peak RSS, and then, if keepalived
// is installed or can be installed, the same figures for keepalived's
// TCP_CHECK against the same backends.
//
//	go run ./bench/health -n 10000 -duration 30s
//
// It needs root (for the namespace). Nothing leaves the namespace.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/lvsd/lvsd/healthcheck"
)

type config struct {
	role       string
	n          int
	interval   time.Duration
	timeout    time.Duration
	duration   time.Duration
	warmup     time.Duration
	check      string
	mode       string
	keepalived string
	cpuprofile string
}

func main() {
	var c config
	flag.StringVar(&c.role, "role", "outer", "internal: outer, inner (in the namespace) or serve (backends)")
	flag.IntVar(&c.n, "n", 10000, "number of backends")
	flag.DurationVar(&c.interval, "interval", time.Second, "check interval")
	flag.DurationVar(&c.timeout, "timeout", 500*time.Millisecond, "check timeout")
	flag.DurationVar(&c.duration, "duration", 20*time.Second, "measured time")
	flag.DurationVar(&c.warmup, "warmup", 3*time.Second, "time before measuring (first checks are spread over one interval)")
	flag.StringVar(&c.check, "check", "tcp", "check type: tcp or http")
	flag.StringVar(&c.mode, "mode", "monitor", "monitor (lvsd's scheduler) or goroutines (one goroutine and ticker per check, for comparison)")
	flag.StringVar(&c.keepalived, "keepalived", "auto", "auto (run if installable), on, or off")
	flag.StringVar(&c.cpuprofile, "cpuprofile", "", "write a CPU profile of the measured lvsd window to this file")
	flag.Parse()
	if err := c.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "health bench:", err)
		os.Exit(2)
	}
	var err error
	switch c.role {
	case "outer":
		err = outer()
	case "inner":
		err = inner(c)
	case "serve":
		err = serve(c)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "health bench:", err)
		os.Exit(1)
	}
}

func (c config) validate() error {
	switch {
	case c.role != "outer" && c.role != "inner" && c.role != "serve":
		return fmt.Errorf("-role %q: want outer, inner or serve", c.role)
	case c.n < 1 || c.n > 50000:
		return fmt.Errorf("-n %d: want 1..50000", c.n)
	case c.interval <= 0 || c.timeout <= 0 || c.timeout > c.interval:
		return fmt.Errorf("-interval %s -timeout %s: want 0 < timeout <= interval", c.interval, c.timeout)
	case c.duration <= 0 || c.duration > 10*time.Minute:
		return fmt.Errorf("-duration %s: want (0, 10m]", c.duration)
	case c.warmup < 0:
		return fmt.Errorf("-warmup %s: must not be negative", c.warmup)
	case c.check != "tcp" && c.check != "http":
		return fmt.Errorf("-check %q: want tcp or http", c.check)
	case c.mode != "monitor" && c.mode != "goroutines":
		return fmt.Errorf("-mode %q: want monitor or goroutines", c.mode)
	case c.keepalived != "auto" && c.keepalived != "on" && c.keepalived != "off":
		return fmt.Errorf("-keepalived %q: want auto, on or off", c.keepalived)
	}
	return nil
}

// backendAddr is backend i's address: 127.10.x.y, y in 1..200.
func backendAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 10 + byte(i/(200*256)), byte(i / 200 % 256), byte(i%200 + 1)})
}

const backendPort = 8080

// outer re-executes this program as "inner" in a new network namespace, so
// every address and socket of the run is private and vanishes with it.
func outer() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root to create a network namespace")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	args := append([]string{"-role=inner"}, os.Args[1:]...)
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("benchmark in namespace: %w", err)
	}
	return nil
}

// raiseNoFile lifts the RLIMIT_NOFILE soft limit to the hard limit
// (inherited by children), and tries a higher hard limit when need exceeds
// it; that last step needs CAP_SYS_RESOURCE, which sandboxes may lack.
func raiseNoFile(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Max < uint64(need) {
		want := syscall.Rlimit{Cur: uint64(need), Max: uint64(need)}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
			return nil
		}
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit nofile %d: %w", lim.Cur, err)
	}
	if lim.Cur < uint64(need) {
		fmt.Printf("health bench: note: open files limited to %d (wanted %d)\n", lim.Cur, need)
	}
	return nil
}

func inner(c config) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	if err := raiseNoFile(2*c.n + 4096); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv, err := startServer(c)
	if err != nil {
		return err
	}
	defer srv.stop()

	fmt.Printf("health bench: %d %s backends, interval %s, timeout %s, %s measured after %s warm-up, GOMAXPROCS %d, load average %s\n",
		c.n, c.check, c.interval, c.timeout, c.duration, c.warmup, runtime.GOMAXPROCS(0), loadAvg())
	lv, err := runLVSD(ctx, c, srv)
	if err != nil {
		return err
	}
	lv.print("lvsd (" + c.mode + ")")
	if c.keepalived == "off" || c.check != "tcp" {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	ka, err := runKeepalived(ctx, c, srv)
	if err != nil {
		if c.keepalived == "on" {
			return err
		}
		fmt.Printf("%-22s not measured: %v\n", "keepalived", err)
		return nil
	}
	ka.print("keepalived")
	return nil
}

// figures are one run's measurements over the measured window.
type figures struct {
	checksPerSec  float64 // counted by the checker (0 if it cannot say)
	acceptsPerSec float64 // connections the backends accepted
	cpuPct        float64 // of one core
	peakRSSMB     float64
	note          string
}

func (f figures) print(name string) {
	checks := "n/a"
	if f.checksPerSec > 0 {
		checks = fmt.Sprintf("%.0f", f.checksPerSec)
	}
	perCheck := "n/a"
	if f.acceptsPerSec > 0 {
		perCheck = fmt.Sprintf("%.1f", f.cpuPct*1e4/f.acceptsPerSec)
	}
	fmt.Printf("%-22s checks/s %8s   backend accepts/s %8.0f   CPU %5.1f%% of one core (%s µs/check)   peak RSS %6.1f MB   %s\n",
		name, checks, f.acceptsPerSec, f.cpuPct, perCheck, f.peakRSSMB, f.note)
}

func cpuTime(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func runLVSD(ctx context.Context, c config, srv *server) (figures, error) {
	spec := healthcheck.Spec{
		Type: healthcheck.Type(c.check), Interval: c.interval, Timeout: c.timeout,
		Rise: 2, Fall: 3, InitialDelay: c.interval, Path: "/",
	}
	checks := make([]healthcheck.Check, c.n)
	for i := range checks {
		checks[i] = healthcheck.Check{
			Key:  healthcheck.Key{Service: "bench", Backend: netip.AddrPortFrom(backendAddr(i), backendPort)},
			Spec: spec,
		}
	}
	var transitions atomic.Int64
	var count func() uint64
	var down func() int
	var closeFn func()
	switch c.mode {
	case "monitor":
		m := healthcheck.NewMonitor(healthcheck.Options{
			Logger:       slog.New(slog.DiscardHandler),
			OnTransition: func(healthcheck.Event) { transitions.Add(1) },
		})
		t := time.Now()
		if err := m.Update(checks); err != nil {
			return figures{}, fmt.Errorf("monitor update: %w", err)
		}
		fmt.Printf("health bench: Update with %d checks took %s\n", len(checks), time.Since(t).Round(time.Millisecond))
		count = m.ChecksRun
		down = func() int {
			n := 0
			reasons := map[string]int{}
			for _, st := range m.Statuses() {
				if st.State != healthcheck.StateUp {
					n++
				}
				if st.Checks > 0 && st.Reason != "ok" {
					reasons[st.Reason]++
				}
			}
			if len(reasons) > 0 {
				fmt.Printf("last results other than ok: %v\n", reasons)
			}
			return n
		}
		closeFn = func() { m.Close() }
	case "goroutines":
		count, down, closeFn = goroutinePerCheck(checks, spec)
	}
	defer closeFn()

	if err := sleepCtx(ctx, c.warmup); err != nil {
		return figures{}, err
	}
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	c0, a0, t0 := count(), srv.accepted(), time.Now()
	if c.cpuprofile != "" {
		f, err := os.Create(c.cpuprofile)
		if err != nil {
			return figures{}, fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return figures{}, fmt.Errorf("cpu profile: %w", err)
		}
	}
	if err := sleepCtx(ctx, c.duration); err != nil {
		return figures{}, err
	}
	if c.cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	c1, a1, el := count(), srv.accepted(), time.Since(t0)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return figures{
		checksPerSec:  float64(c1-c0) / el.Seconds(),
		acceptsPerSec: float64(a1-a0) / el.Seconds(),
		cpuPct:        100 * float64(cpuTime(&ru1)-cpuTime(&ru0)) / float64(el),
		peakRSSMB:     float64(ru1.Maxrss) / 1024,
		note: fmt.Sprintf("(user %.1f%% sys %.1f%%, down %d, transitions %d, goroutines %d, heap %.0f MB)",
			100*float64(ru1.Utime.Nano()-ru0.Utime.Nano())/float64(el), 100*float64(ru1.Stime.Nano()-ru0.Stime.Nano())/float64(el),
			down(), transitions.Load(), runtime.NumGoroutine(), float64(ms.HeapInuse)/(1<<20)),
	}, nil
}

// goroutinePerCheck is the naive design, for comparison: one goroutine and
// one ticker per check.
func goroutinePerCheck(checks []healthcheck.Check, spec healthcheck.Spec) (count func() uint64, down func() int, closeFn func()) {
	checker, err := healthcheck.New(spec)
	if err != nil {
		panic(err)
	}
	var n atomic.Uint64
	var failing atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, ch := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := healthcheck.Target{Addr: ch.Key.Backend.Addr(), Port: ch.Key.Backend.Port()}
			select { // spread the first checks over one interval
			case <-time.After(spec.Interval * time.Duration(i) / time.Duration(len(checks))):
			case <-ctx.Done():
				return
			}
			tk := time.NewTicker(spec.Interval)
			defer tk.Stop()
			wasOK := true
			for {
				r := checker.Check(ctx, t)
				if ctx.Err() != nil {
					return
				}
				n.Add(1)
				if r.OK != wasOK {
					wasOK = r.OK
					if r.OK {
						failing.Add(-1)
					} else {
						failing.Add(1)
					}
				}
				select {
				case <-tk.C:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return n.Load, func() int { return int(failing.Load()) }, func() { cancel(); wg.Wait() }
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// server is the backends' process: it listens on every backend address and
// reports, per request on its stdin, how many connections it has accepted.
type server struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	mu  sync.Mutex
}

func startServer(c config) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.Command(exe, "-role=serve", "-n", strconv.Itoa(c.n), "-check", c.check)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start backends: %w", err)
	}
	s := &server{cmd: cmd, in: in, out: bufio.NewReader(outPipe)}
	ready := make(chan error, 1)
	go func() {
		line, err := s.out.ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("backends said %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(60 * time.Second):
		err = errors.New("backends not ready after 60s")
	}
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("start backends: %w", err)
	}
	return s, nil
}

func (s *server) accepted() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := io.WriteString(s.in, "count\n"); err != nil {
		return 0
	}
	line, err := s.out.ReadString('\n')
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(line), 10, 64)
	return n
}

func (s *server) stop() {
	_ = s.in.Close()
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// serve is the backends: one listener per address, accept-and-close (tcp)
// or a minimal HTTP 200 (http).
func serve(c config) error {
	var accepted atomic.Uint64
	hs := &http.Server{
		Handler:     http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }),
		ReadTimeout: 5 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				accepted.Add(1)
			}
		},
		ErrorLog: nil,
	}
	lc := net.ListenConfig{}
	for i := range c.n {
		addr := netip.AddrPortFrom(backendAddr(i), backendPort).String()
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		if c.check == "http" {
			go func() { _ = hs.Serve(ln) }()
			continue
		}
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				accepted.Add(1)
				_ = conn.Close()
			}
		}()
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		fmt.Println(accepted.Load())
	}
	return nil
}

// lockedBuffer is a bytes.Buffer safe for a child's stdout and stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.b) < 1<<20 {
		l.b = append(l.b, p...)
	}
	return len(p), nil
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b...)
}

// loadAvg is the machine's 1-minute load average: figures taken on a busy
// machine are not comparable with a quiet one's.
func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return "unknown"
	}
	return f[0]
}
