package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/lvsd/lvsd/config"
)

// DefaultConfig is where lvsd looks for its config.
const DefaultConfig = "/etc/lvsd/lvsd.toml"

const usage = `usage:
  lvsd [--config PATH] [--log-level LEVEL] [--log-format text|json]   run the director
  lvsd --check [--config PATH]                                         validate the config and exit
  lvsd witness [--config PATH]                                         run a cluster witness (votes, holds no VIP)

Signals: SIGHUP reloads the config (an invalid one changes nothing);
SIGTERM and SIGINT hand the VIPs over and stop, leaving IPVS in place.
`

// Main is lvsd's command line; it returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	witness := false
	if len(args) > 0 && args[0] == "witness" {
		witness, args = true, args[1:]
	}
	fs := flag.NewFlagSet("lvsd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	path := fs.String("config", DefaultConfig, "config file")
	check := fs.Bool("check", false, "validate the config, print every error as file:line:col, and exit")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "lvsd: %v\n\n%s", err, usage)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "lvsd: unexpected argument %q\n\n%s", fs.Arg(0), usage)
		return 2
	}
	if *check {
		return checkMain(*path, stdout, stderr)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "lvsd: --log-level: %v\n", err)
		return 2
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch *format {
	case "text":
		h = slog.NewTextHandler(stderr, hopts)
	case "json":
		h = slog.NewJSONHandler(stderr, hopts)
	default:
		fmt.Fprintf(stderr, "lvsd: --log-format must be text or json, got %q\n", *format)
		return 2
	}
	log := slog.New(h)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default: // a reload is already pending; it will read the newest file
			}
		}
	}()
	err := Run(ctx, Options{ConfigPath: *path, Log: log, Witness: witness, Reload: reload})
	if err != nil {
		var ce config.Errors
		if errors.As(err, &ce) {
			for _, e := range ce {
				fmt.Fprintln(stderr, e.Error())
			}
			log.Error("invalid config; not starting", "config", *path, "errors", len(ce))
			return 1
		}
		log.Error("lvsd failed", "err", err)
		return 1
	}
	return 0
}

// checkMain validates a config the way a reload would.
func checkMain(path string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(path)
	if err == nil {
		err = checkSpecs(cfg)
	}
	if err != nil {
		var ce config.Errors
		if errors.As(err, &ce) {
			for _, e := range ce {
				fmt.Fprintln(stderr, e.Error())
			}
			fmt.Fprintf(stderr, "%s: %d error(s)\n", path, len(ce))
			return 1
		}
		fmt.Fprintf(stderr, "lvsd: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid (%d services, %d vip groups)\n", path, len(cfg.Services), len(cfg.VIPGroups))
	return 0
}
