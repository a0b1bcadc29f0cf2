// Command lvsctl is the operator CLI for lvsd; see package ctl.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/lvsd/lvsd/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(ctl.Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
