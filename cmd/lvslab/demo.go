package main

import (
	"context"
	"errors"
	"io"
)

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	return 1, errors.New("not yet")
}

func demoGuest(ctx context.Context, stdout io.Writer) error { return errors.New("not yet") }
