// Command lvslab runs the real-kernel lab: it sets up and boots a qemu VM
// with a stock Debian kernel that has IPVS, and runs commands or lab-tagged
// Go tests inside it.
//
//	lvslab setup                               install and build everything (idempotent)
//	lvslab run [flags] -- CMD [ARGS...]        run one command in the VM
//	lvslab test [flags] [-run RE] [-v] [PKG...] run lab-tagged tests in one VM boot
//	lvslab demo [flags]                        a persistent IPVS service serving a client
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lvsd/lvsd/lab/vm"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  lvslab setup
  lvslab run [-mem MB] [-cpus N] [-timeout D] -- CMD [ARGS...]
  lvslab test [-mem MB] [-cpus N] [-timeout D] [-run REGEX] [-v] [PACKAGES...]
  lvslab demo [-mem MB] [-timeout D]
`

// vmFlags are shared by the subcommands that boot the VM.
type vmFlags struct {
	mem, cpus int
	timeout   time.Duration
	bootLimit time.Duration
	accel     string
	debug     bool
}

func (v *vmFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&v.mem, "mem", 1024, "guest memory in MB")
	fs.IntVar(&v.cpus, "cpus", 2, "guest vCPUs")
	fs.DurationVar(&v.timeout, "timeout", 20*time.Minute, "limit for the whole VM run")
	fs.DurationVar(&v.bootLimit, "boot-timeout", 3*time.Minute, "a boot slower than this counts as hung: killed and tried once more")
	fs.StringVar(&v.accel, "accel", "", "tcg or kvm (default: chosen from the host)")
	fs.BoolVar(&v.debug, "debug", false, "log debug detail (qemu command line)")
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	code := 0
	switch args[0] {
	case "setup":
		err = cmdSetup(ctx, args[1:], stderr)
	case "run":
		code, err = cmdRun(ctx, args[1:], stdout, stderr)
	case "test":
		code, err = cmdTest(ctx, args[1:], stdout, stderr)
	case "demo":
		code, err = cmdDemo(ctx, args[1:], stdout, stderr)
	case "demo-guest": // the demo's part that runs inside the VM
		err = demoGuest(ctx, stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "lvslab: unknown command %q\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 2
		}
		fmt.Fprintf(stderr, "lvslab %s: %v\n", args[0], err)
		if ctx.Err() != nil {
			return 130
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

func logger(w io.Writer, debug bool) *slog.Logger {
	lvl := slog.LevelInfo
	if debug {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

func cmdSetup(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	debug := fs.Bool("debug", false, "log debug detail")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	start := time.Now()
	a, err := vm.Ensure(ctx, vm.CacheDir(), logger(stderr, *debug), stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "lvslab: ready in %.1fs: kernel %s, cache %s, accel %s\n",
		time.Since(start).Seconds(), a.KernelVersion, vm.CacheDir(), vm.ChooseAccel())
	return nil
}

// boot ensures the cache and runs script in one VM, reporting timings.
func boot(ctx context.Context, f vmFlags, script string, env []string, stdout, stderr io.Writer) (*vm.Result, error) {
	log := logger(stderr, f.debug)
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	a, err := vm.Ensure(ctx, vm.CacheDir(), log, stderr)
	if err != nil {
		return nil, fmt.Errorf("set up the lab: %w", err)
	}
	res, err := vm.Run(ctx, a, vm.CacheDir(), vm.Spec{
		Script: script, Env: env, MemoryMB: f.mem, CPUs: f.cpus, Accel: f.accel, BootTimeout: f.bootLimit,
		Stdout: stdout, Stderr: stderr,
	}, log)
	if res != nil {
		fmt.Fprintf(stderr, "lvslab: VM (%s, kernel %s): boot %.2fs, total %.2fs, qemu CPU %.2fs\n",
			res.Accel, a.KernelVersion, res.Boot.Seconds(), res.Total.Seconds(), res.CPU.Seconds())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w (limit -timeout %s)", err, f.timeout)
	}
	return res, err
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f vmFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	if fs.NArg() == 0 {
		return 2, errors.New("no command given (lvslab run -- CMD ARGS...)")
	}
	quoted := make([]string, fs.NArg())
	for i, a := range fs.Args() {
		quoted[i] = vm.ShellQuote(a)
	}
	res, err := boot(ctx, f, "exec "+strings.Join(quoted, " ")+"\n", nil, stdout, stderr)
	if err != nil {
		return 1, err
	}
	return res.ExitCode, nil
}
