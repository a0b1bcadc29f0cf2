package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

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

func demoGuest(ctx context.Context, stdout io.Writer) error {
	if !vm.InVM() {
		return errors.New("demo-guest runs inside the lab VM; use `lvslab demo`")
	}
	return demo.Run(ctx, stdout, demo.Options{})
}
