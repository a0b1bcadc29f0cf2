// Command ipvs measures how fast lvsd programs and reads the kernel's IPVS
// table, next to anchors measured in the same run. It needs a kernel with
// IPVS and root; on this project's machines run it in the lab VM:
//
//	go build -o bin/lvsd ./cmd/lvsd && go build -o /tmp/bench-ipvs ./bench/ipvs
//	go run ./cmd/lvslab run -mem 2048 -- /tmp/bench-ipvs -lvsd bin/lvsd               # 10,000 × 10
//	go run ./cmd/lvslab run -mem 2048 -- /tmp/bench-ipvs -lvsd bin/lvsd -services 1000 # quick
//
// Every figure runs in a fresh network namespace with lo up, and prints one
// line: name, value, and the anchor it is compared with. Each figure is one
// function. The lvsd figures (lvsd.go) run the lvsd binary itself: programming
// from empty, a one-weight reload, writes when in sync, peak RSS.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/moby/ipvs"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/ipvsdp"
)

type config struct {
	services, dests int
	batch           int
	// figures to run, in order; a name may repeat (to check drift).
	figures  []string
	mobyDump bool // run moby/ipvs's dump as the dump anchor
	// lvsd figures
	lvsd         string        // the lvsd binary
	reloadTrials int           // one-weight reloads timed
	resync       time.Duration // resync_interval of the restarted lvsd
	lvsdVerbose  bool          // echo every lvsd log line to stderr
}

// figureNames are the values of -figures.
var figureNames = []string{"dp", "dp-ackeach", "ipvsadm", "moby", "dump", "lvsd"}

func main() {
	var cfg config
	flag.IntVar(&cfg.services, "services", 10000, "virtual services")
	flag.IntVar(&cfg.dests, "dests", 10, "DR destinations per service")
	flag.IntVar(&cfg.batch, "batch", 0, "requests per sendmsg (0: ipvsnl default)")
	figures := flag.String("figures", "dp,dump,lvsd,ipvsadm", "comma-separated figures in run order: dp (ipvsdp.Apply), dp-ackeach (the same with an ack per request), ipvsadm (ipvsadm -R), moby (moby/ipvs one call per object), dump, lvsd (the lvsd binary: program, reload, in sync, RSS)")
	flag.BoolVar(&cfg.mobyDump, "moby-dump", true, "measure moby/ipvs's dump as the dump anchor")
	flag.StringVar(&cfg.lvsd, "lvsd", "bin/lvsd", "the lvsd binary the lvsd figures run (go build -o bin/lvsd ./cmd/lvsd)")
	flag.IntVar(&cfg.reloadTrials, "reload-trials", 5, "one-weight reloads timed by the lvsd figures")
	flag.DurationVar(&cfg.resync, "resync", 2*time.Second, "resync_interval of the restarted lvsd in the lvsd figures")
	flag.BoolVar(&cfg.lvsdVerbose, "lvsd-v", false, "echo every lvsd log line to stderr (default: warnings and errors)")
	flag.Parse()
	cfg.figures = strings.Split(*figures, ",")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench-ipvs:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	if cfg.services < 1 || cfg.services > 60000 || cfg.dests < 1 || cfg.dests > 250 {
		return fmt.Errorf("-services %d -dests %d: want 1..60000 services and 1..250 destinations", cfg.services, cfg.dests)
	}
	if slices.Contains(cfg.figures, "lvsd") {
		if cfg.reloadTrials < 1 || cfg.resync < 100*time.Millisecond {
			return fmt.Errorf("-reload-trials %d -resync %s: want at least 1 trial and 100ms", cfg.reloadTrials, cfg.resync)
		}
		abs, err := filepath.Abs(cfg.lvsd)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			return fmt.Errorf("-lvsd: %w (build it with go build -o bin/lvsd ./cmd/lvsd, or leave lvsd out of -figures)", err)
		}
		cfg.lvsd = abs
	}
	b := &bench{cfg: cfg, out: out, log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer b.cleanup()

	// Load the module and settle the family lookup before any clock runs.
	warm, err := ipvsdp.Open(ctx, ipvsdp.WithLogger(b.log))
	if err != nil {
		return err
	}
	warm.Close()
	objects := cfg.services * (1 + cfg.dests)
	b.printf("bench ipvs: %d services × %d DR destinations = %d objects; kernel %s; %d CPUs\n",
		cfg.services, cfg.dests, objects, kernelRelease(), runtime.NumCPU())

	if err := b.warmUp(ctx); err != nil {
		return err
	}
	var dp, ref, lvsd time.Duration
	for _, f := range cfg.figures {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch f {
		case "dp", "dp-ackeach":
			d, err := b.figureProgramDataplane(ctx, f == "dp-ackeach")
			if err != nil {
				return err
			}
			if dp == 0 && f == "dp" {
				dp = d
				b.figurePeakRSS()
			}
		case "ipvsadm":
			d, err := b.figureProgramIpvsadm(ctx)
			if err != nil {
				return err
			}
			if ref == 0 {
				ref = d
			}
		case "moby":
			if _, err := b.figureProgramMoby(ctx); err != nil {
				return err
			}
		case "dump":
			if err := b.figureDump(ctx); err != nil {
				return err
			}
		case "lvsd":
			d, err := b.lvsdFigures(ctx)
			if err != nil {
				return err
			}
			if lvsd == 0 {
				lvsd = d
			}
		default:
			return fmt.Errorf("-figures: unknown figure %q (known: %s)", f, strings.Join(figureNames, ", "))
		}
	}
	if dp > 0 && ref > 0 {
		b.line("program ratio", fmt.Sprintf("%.3f", dp.Seconds()/ref.Seconds()), "dp / ipvsadm -R; target ≤ 0.1; lab notes: moby/ipvs 0.30, keepalived 0.53, genl 1,000/send 0.06")
	}
	if lvsd > 0 && ref > 0 {
		b.line("lvsd program ratio", fmt.Sprintf("%.3f", lvsd.Seconds()/ref.Seconds()), "lvsd from empty / ipvsadm -R (same boot); target ≤ 0.1")
	}
	return nil
}

type bench struct {
	cfg        config
	out        io.Writer
	log        *slog.Logger
	namespaces []string
	// programmed is the namespace the last dp figure filled; a dump figure
	// right after it reads it. At most one full table exists at a time:
	// every service and destination has a rate estimator the kernel (6.1)
	// walks every 2 s, so a table left behind slows whatever runs next.
	programmed string
}

// discardProgrammed removes the table of the last dp figure, if any.
func (b *bench) discardProgrammed(ctx context.Context) error {
	if b.programmed == "" {
		return nil
	}
	path := b.programmed
	b.programmed = ""
	return b.discard(ctx, path)
}

// discard empties a namespace's IPVS table (stopping its estimators at
// once) and deletes the namespace.
func (b *bench) discard(ctx context.Context, path string) error {
	cmd := exec.CommandContext(ctx, "ipvsadm", "-C")
	if err := startInNS(path, cmd); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("ipvsadm -C in %s: %w", path, err)
	}
	name := filepath.Base(path)
	if err := netns.DeleteNamed(name); err != nil {
		return fmt.Errorf("deleting namespace %s: %w", name, err)
	}
	b.namespaces = slices.DeleteFunc(b.namespaces, func(n string) bool { return n == name })
	return nil
}

func (b *bench) printf(format string, args ...any) { fmt.Fprintf(b.out, format, args...) }

// line prints one figure: name, value, anchor.
func (b *bench) line(name, value, anchor string) {
	b.printf("%-26s %14s   %s\n", name, value, anchor)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }

// figureProgramDataplane programs the whole table from empty through
// ipvsdp.Apply, as lvsd's first reconcile does.
func (b *bench) figureProgramDataplane(ctx context.Context, ackEach bool) (time.Duration, error) {
	if err := b.discardProgrammed(ctx); err != nil {
		return 0, err
	}
	path, err := b.freshNS("dp")
	if err != nil {
		return 0, err
	}
	elapsed, err := b.programDataplane(ctx, path, b.cfg.services, b.cfg.dests, ackEach)
	if err != nil {
		return 0, err
	}
	b.programmed = path
	name := "program ipvsdp.Apply"
	if ackEach {
		name += " (ack each)"
	}
	b.line(name, secs(elapsed), fmt.Sprintf("%.1f µs/object", float64(elapsed.Microseconds())/float64(b.cfg.services*(1+b.cfg.dests))))
	return elapsed, nil
}

func (b *bench) programDataplane(ctx context.Context, path string, services, dests int, ackEach bool) (time.Duration, error) {
	opts := []ipvsdp.Option{ipvsdp.WithNetNS(path), ipvsdp.WithLogger(b.log)}
	if ackEach {
		opts = append(opts, ipvsdp.WithAckEach())
	}
	if b.cfg.batch > 0 {
		opts = append(opts, ipvsdp.WithBatchSize(b.cfg.batch))
	}
	dp, err := ipvsdp.Open(ctx, opts...)
	if err != nil {
		return 0, err
	}
	defer dp.Close()
	ops := tableOps(services, dests)
	start := time.Now()
	errs := dp.Apply(ctx, ops)
	elapsed := time.Since(start)
	if errs != nil {
		return 0, fmt.Errorf("Apply: %w", firstErrors(errs, 5))
	}
	return elapsed, verify(ctx, dp, services, dests)
}

// verify checks the table is complete: every service, and the destinations
// of the first and last.
func verify(ctx context.Context, dp *ipvsdp.Dataplane, services, dests int) error {
	svcs, err := dp.Services(ctx)
	if err != nil {
		return err
	}
	if len(svcs) != services {
		return fmt.Errorf("kernel has %d services after programming, want %d", len(svcs), services)
	}
	for _, i := range []int{0, services - 1} {
		ds, err := dp.Destinations(ctx, serviceKey(i))
		if err != nil {
			return err
		}
		if len(ds) != dests {
			return fmt.Errorf("service %s has %d destinations, want %d", serviceKey(i), len(ds), dests)
		}
	}
	return nil
}

// figurePeakRSS reports the process's peak resident set so far: the ops of
// the full table plus ipvsnl's buffers.
func (b *bench) figurePeakRSS() {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.line("peak RSS", "?", err.Error())
		return
	}
	b.line("peak RSS (bench process)", fmt.Sprintf("%.1f MiB", float64(ru.Maxrss)/1024), "getrusage maxrss after programming; includes the op list")
}

// figureProgramIpvsadm restores the same table with `ipvsadm -R`, the anchor.
func (b *bench) figureProgramIpvsadm(ctx context.Context) (time.Duration, error) {
	if err := b.discardProgrammed(ctx); err != nil {
		return 0, err
	}
	path, err := b.freshNS("ipvsadm")
	if err != nil {
		return 0, err
	}
	elapsed, err := b.programIpvsadm(ctx, path, b.cfg.services, b.cfg.dests)
	if err != nil {
		return 0, err
	}
	if err := b.discard(ctx, path); err != nil {
		return 0, err
	}
	b.line("program ipvsadm -R", secs(elapsed), "anchor (same boot); lab notes: 77.3 s at 10k×10, 8.95 s at 1k×10")
	return elapsed, nil
}

func (b *bench) programIpvsadm(ctx context.Context, path string, services, dests int) (time.Duration, error) {
	f, err := os.CreateTemp("", "bench-ipvs-restore-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	w := bufio.NewWriter(f)
	writeRestore(w, services, dests)
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		return 0, fmt.Errorf("writing the restore file: %w", err)
	}
	in, err := os.Open(f.Name())
	if err != nil {
		return 0, err
	}
	defer in.Close()
	cmd := exec.CommandContext(ctx, "ipvsadm", "-R")
	cmd.Stdin = in
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := startInNS(path, cmd); err != nil {
		return 0, err
	}
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("ipvsadm -R: %w: %s", err, stderr.String())
	}
	return time.Since(start), nil
}

// figureProgramMoby programs the table with moby/ipvs, one call per object.
func (b *bench) figureProgramMoby(ctx context.Context) (time.Duration, error) {
	if err := b.discardProgrammed(ctx); err != nil {
		return 0, err
	}
	path, err := b.freshNS("moby")
	if err != nil {
		return 0, err
	}
	elapsed, err := programMoby(ctx, path, b.cfg.services, b.cfg.dests)
	if err != nil {
		return 0, err
	}
	if err := b.discard(ctx, path); err != nil {
		return 0, err
	}
	b.line("program moby/ipvs", secs(elapsed), "second anchor: one netlink round trip per object")
	return elapsed, nil
}

func programMoby(ctx context.Context, path string, services, dests int) (time.Duration, error) {
	h, err := ipvs.New(path)
	if err != nil {
		return 0, fmt.Errorf("moby/ipvs in %s: %w", path, err)
	}
	defer h.Close()
	start := time.Now()
	for i := range services {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		k := serviceKey(i)
		svc := &ipvs.Service{AddressFamily: uint16(k.Family), Protocol: uint16(k.Protocol), Address: k.Address.AsSlice(),
			Port: k.Port, SchedName: "rr", Netmask: 0xFFFFFFFF}
		if err := h.NewService(svc); err != nil {
			return 0, fmt.Errorf("moby NewService %s: %w", k, err)
		}
		for j := range dests {
			d := &ipvs.Destination{Address: destAddr(j).AsSlice(), Port: 80, Weight: 1, ConnectionFlags: ipvs.ConnectionFlagDirectRoute}
			if err := h.NewDestination(svc, d); err != nil {
				return 0, fmt.Errorf("moby NewDestination %s: %w", destAddr(j), err)
			}
		}
	}
	return time.Since(start), nil
}

// warmUp runs every listed method once on a small table, in namespaces of
// its own, so the timed runs do not pay for first use: paging in binaries
// over 9p, the kernel's first allocations.
func (b *bench) warmUp(ctx context.Context) error {
	const n, d = 20, 10
	done := map[string]bool{}
	for _, f := range b.cfg.figures {
		if done[f] {
			continue
		}
		done[f] = true
		var err error
		switch f {
		case "dp", "dp-ackeach", "dump":
			var path string
			if path, err = b.freshNS("warm"); err == nil {
				if _, err = b.programDataplane(ctx, path, n, d, f == "dp-ackeach"); err == nil {
					err = b.discard(ctx, path)
				}
			}
		case "ipvsadm":
			var path string
			if path, err = b.freshNS("warm"); err == nil {
				if _, err = b.programIpvsadm(ctx, path, n, d); err == nil {
					err = b.discard(ctx, path)
				}
			}
		case "moby":
			var path string
			if path, err = b.freshNS("warm"); err == nil {
				if _, err = programMoby(ctx, path, n, d); err == nil {
					err = b.discard(ctx, path)
				}
			}
		case "lvsd":
			err = b.warmUpLvsd(ctx, n, d)
		}
		if err != nil {
			return fmt.Errorf("warming up %s: %w", f, err)
		}
	}
	return nil
}

// figureDump reads the table the Dataplane figure programmed: services
// alone, then everything with counters (ipvsdp.Stats), next to moby/ipvs's
// GetServices + GetDestinations.
func (b *bench) figureDump(ctx context.Context) error {
	if b.programmed == "" {
		return errors.New("the dump figure reads the table of the dp figure just before it: list dump right after dp in -figures")
	}
	dp, err := ipvsdp.Open(ctx, ipvsdp.WithNetNS(b.programmed), ipvsdp.WithLogger(b.log))
	if err != nil {
		return err
	}
	defer dp.Close()
	start := time.Now()
	svcs, err := dp.Services(ctx)
	if err != nil {
		return err
	}
	b.line("dump services", secs(time.Since(start)), fmt.Sprintf("%d services; lab notes: moby GetServices 0.4-0.5 s at 10k", len(svcs)))

	start = time.Now()
	st, err := dp.Stats(ctx)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	n := 0
	for _, s := range st {
		n += len(s.Destinations)
	}
	if len(st) != b.cfg.services || n != b.cfg.services*b.cfg.dests {
		return fmt.Errorf("full dump returned %d services, %d destinations", len(st), n)
	}
	b.line("dump full (ipvsdp.Stats)", secs(elapsed), "services + destinations with 64-bit counters; lab notes: moby 9-10 s at 10k×10")

	if !b.cfg.mobyDump {
		return nil
	}
	h, err := ipvs.New(b.programmed)
	if err != nil {
		return fmt.Errorf("moby/ipvs: %w", err)
	}
	defer h.Close()
	start = time.Now()
	msvcs, err := h.GetServices()
	if err != nil {
		return fmt.Errorf("moby GetServices: %w", err)
	}
	n = 0
	for _, s := range msvcs {
		ds, err := h.GetDestinations(s)
		if err != nil {
			return fmt.Errorf("moby GetDestinations: %w", err)
		}
		n += len(ds)
	}
	b.line("dump full (moby/ipvs)", secs(time.Since(start)), fmt.Sprintf("anchor (same boot): %d services, %d destinations", len(msvcs), n))
	return nil
}

// The table: service i is TCP 198.18.x.y:80 (rr); destination j of every
// service is 198.19.255.j+1:80, direct routing, weight 1.

func serviceKey(i int) director.ServiceKey {
	return director.ServiceKey{Family: director.IPv4, Protocol: director.TCP,
		Address: netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 1)}), Port: 80}
}

func destAddr(j int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 255, byte(j + 1)}) }

func tableOps(services, dests int) []director.Op {
	ops := make([]director.Op, 0, services*(1+dests))
	for i := range services {
		svc := director.Service{Key: serviceKey(i), Scheduler: "rr", PersistenceBits: 32}
		ops = append(ops, director.Op{Kind: director.OpAddService, Service: svc})
		for j := range dests {
			ops = append(ops, director.Op{Kind: director.OpAddDest, Service: svc, Dest: director.Destination{
				Key: director.DestKey{Address: destAddr(j), Port: 80}, Weight: 1, Forward: director.ForwardDR}})
		}
	}
	return ops
}

func writeRestore(w io.Writer, services, dests int) {
	for i := range services {
		vip := netip.AddrPortFrom(serviceKey(i).Address, 80)
		fmt.Fprintf(w, "-A -t %s -s rr\n", vip)
		for j := range dests {
			fmt.Fprintf(w, "-a -t %s -r %s:80 -g -w 1\n", vip, destAddr(j))
		}
	}
}

func firstErrors(errs []error, n int) error {
	var out []error
	failed := 0
	for _, e := range errs {
		if e != nil {
			failed++
			if len(out) < n {
				out = append(out, e)
			}
		}
	}
	return fmt.Errorf("%d ops failed, first: %w", failed, errors.Join(out...))
}

// freshNS makes a named namespace with lo up and returns its path.
func (b *bench) freshNS(label string) (string, error) {
	name := fmt.Sprintf("lvsdbench%d-%s%d", os.Getpid(), label, len(b.namespaces))
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return "", err
	}
	defer orig.Close()
	ns, nerr := netns.NewNamed(name)
	if err := netns.Set(orig); err != nil {
		return "", fmt.Errorf("returning from namespace %s (thread retired): %w", name, err)
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		return "", fmt.Errorf("creating namespace %s: %w", name, nerr)
	}
	defer ns.Close()
	b.namespaces = append(b.namespaces, name)
	h, err := vnl.NewHandleAt(ns)
	if err != nil {
		return "", err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return "", err
	}
	// A fresh namespace refuses IPv4 destinations until lo is up.
	if err := h.LinkSetUp(lo); err != nil {
		return "", fmt.Errorf("lo up in %s: %w", name, err)
	}
	return filepath.Join("/run/netns", name), nil
}

func (b *bench) cleanup() {
	for _, n := range b.namespaces {
		if err := netns.DeleteNamed(n); err != nil {
			fmt.Fprintf(os.Stderr, "bench-ipvs: deleting namespace %s: %v\n", n, err)
		}
	}
}

// startInNS starts cmd from a thread inside the namespace at path, so the
// child inherits it.
func startInNS(path string, cmd *exec.Cmd) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	serr := cmd.Start()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("returning from %s (thread retired): %w", path, err)
	}
	runtime.UnlockOSThread()
	return serr
}

func kernelRelease() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "?"
	}
	var sb strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}
