package ipvsnl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"
)

// IPVS sysctl knobs lvsd uses. They live under /proc/sys/net/ipv4/vs and,
// like the IPVS table, are per network namespace: a value set in one
// namespace does not affect another.
const (
	// SysctlExpireNodestConn (0/1): expire a connection at once when its
	// destination is removed, instead of dropping its packets until it
	// times out, so persistent clients get rescheduled.
	SysctlExpireNodestConn = "expire_nodest_conn"
	// SysctlExpireQuiescentTemplate (0/1): expire a persistence template
	// when its destination's weight becomes 0, so sticky clients of a
	// drained server move on their next connection.
	SysctlExpireQuiescentTemplate = "expire_quiescent_template"
	// SysctlConnReuseMode (0..3): how a new SYN reusing a TIME_WAIT
	// connection's ports is handled (bit 1: reschedule).
	SysctlConnReuseMode = "conn_reuse_mode"
)

var knownSysctls = map[string]bool{
	SysctlExpireNodestConn:        true,
	SysctlExpireQuiescentTemplate: true,
	SysctlConnReuseMode:           true,
}

const sysctlDir = "/proc/sys/net/ipv4/vs"

// Sysctl reads an IPVS knob of the client's network namespace.
func (c *Client) Sysctl(name string) (int, error) {
	var v int
	err := c.inNetNS(func() error {
		var err error
		v, err = readSysctl(sysctlDir, name)
		return err
	})
	return v, err
}

// SetSysctl writes an IPVS knob of the client's network namespace.
func (c *Client) SetSysctl(name string, value int) error {
	return c.inNetNS(func() error { return writeSysctl(sysctlDir, name, value) })
}

func sysctlPath(dir, name string) (string, error) {
	if !knownSysctls[name] {
		return "", fmt.Errorf("ipvsnl: unknown IPVS sysctl %q (known: %s, %s, %s)", name,
			SysctlExpireNodestConn, SysctlExpireQuiescentTemplate, SysctlConnReuseMode)
	}
	return filepath.Join(dir, name), nil
}

func readSysctl(dir, name string) (int, error) {
	p, err := sysctlPath(dir, name)
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, sysctlErr("reading", p, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("ipvsnl: reading %s: %w", p, err)
	}
	return v, nil
}

func writeSysctl(dir, name string, value int) error {
	p, err := sysctlPath(dir, name)
	if err != nil {
		return err
	}
	// O_WRONLY without O_CREATE: a missing knob must not become a file.
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return sysctlErr("writing", p, err)
	}
	_, werr := f.WriteString(strconv.Itoa(value))
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("ipvsnl: writing %d to %s: %w", value, p, err)
	}
	return nil
}

func sysctlErr(doing, path string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ipvsnl: %s %s: %w (is the ip_vs module loaded?)", doing, path, err)
	}
	return fmt.Errorf("ipvsnl: %s %s: %w", doing, path, err)
}

// inNetNS runs fn on a thread switched into the client's network namespace:
// /proc/sys/net resolves against the calling thread's namespace. The thread
// is discarded if it cannot be switched back.
func (c *Client) inNetNS(fn func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	if c.nsFile == nil {
		return fn()
	}
	target := netns.NsHandle(int(c.nsFile.Fd()))
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("ipvsnl: reading the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("ipvsnl: entering the client's network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it ends with this goroutine.
			done <- errors.Join(ferr, fmt.Errorf("ipvsnl: leaving the client's network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}
