package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/lvsd/lvsd/daemon"
	"github.com/lvsd/lvsd/lab/demo"
	"github.com/lvsd/lvsd/lab/vm"
)

// cmdDemo boots the VM and runs this same binary's demo-guest inside it.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f vmFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	exe, err := os.Executable()
	if err != nil {
		return 1, fmt.Errorf("find own binary: %w", err)
	}
	res, err := boot(ctx, f, "exec "+vm.ShellQuote(exe)+" demo-guest\n", nil, stdout, stderr)
	if err != nil {
		return 1, err
	}
	return res.ExitCode, nil
}

// demoLVSD after demo-guest makes this binary run lvsd: the demo starts
// its directors as `lvslab demo-guest lvsd --config ...`, so it needs no
// separately built lvsd inside the VM.
const demoLVSD = "lvsd"

// demoGuest is the part of the demo that runs inside the VM: the demo
// itself, or (with demoLVSD) one of its lvsd directors.
func demoGuest(ctx context.Context, stdout io.Writer) error {
	if !vm.InVM() {
		return errors.New("demo-guest runs inside the lab VM; use `lvslab demo`")
	}
	if len(os.Args) > 2 && os.Args[2] == demoLVSD {
		if code := daemon.Main(os.Args[3:], os.Stdout, os.Stderr); code != 0 {
			return fmt.Errorf("lvsd exited with status %d", code)
		}
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	return demo.Run(ctx, stdout, demo.Options{LVSD: []string{exe, "demo-guest", demoLVSD}})
}
