package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultCacheDir is where the lab keeps what it builds unless
// $LVSD_LAB_CACHE names another directory.
const DefaultCacheDir = "/var/cache/lvsd-lab"

// CacheDir returns the cache directory in effect.
func CacheDir() string {
	if d := os.Getenv("LVSD_LAB_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// lockCache takes an exclusive flock on dir/lock, waiting until ctx is done.
// The lock is released by the returned function (or when the process dies).
func lockCache(ctx context.Context, dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache directory: %w", err)
	}
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open cache lock: %w", err)
	}
	// Poll with LOCK_NB so that ctx cancellation (Ctrl-C) is honoured.
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for cache lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// NewRunDir makes a per-run directory under cache/runs named after this
// process, so that a later run can remove those of dead processes.
func NewRunDir(cache string) (string, error) { return newRunDir(cache) }

func newRunDir(cache string) (string, error) {
	runs := filepath.Join(cache, "runs")
	if err := os.MkdirAll(runs, 0o755); err != nil {
		return "", fmt.Errorf("create runs directory: %w", err)
	}
	sweepRunDirs(runs)
	d, err := os.MkdirTemp(runs, fmt.Sprintf("run-%d-", os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("create run directory: %w", err)
	}
	return d, nil
}

// sweepRunDirs removes run directories left by processes that no longer exist.
func sweepRunDirs(runs string) {
	ents, err := os.ReadDir(runs)
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, ok := runDirPID(e.Name())
		if !ok || pidAlive(pid) {
			continue
		}
		os.RemoveAll(filepath.Join(runs, e.Name()))
	}
}

// runDirPID parses the PID out of a "run-PID-suffix" name.
func runDirPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "run-")
	if !ok {
		return 0, false
	}
	p, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	return pid, err == nil && pid > 0
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
