package ipvsnl

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdlayher/genetlink"
	"golang.org/x/sys/unix"
)

func TestLookupFamily(t *testing.T) {
	ctx := context.Background()
	missing := &os.SyscallError{Syscall: "netlink", Err: unix.ENOENT}
	present := genetlink.Family{ID: 33, Name: "IPVS"}

	t.Run("present", func(t *testing.T) {
		loads := 0
		f, err := lookupFamily(ctx, func() (genetlink.Family, error) { return present, nil },
			func(context.Context) error { loads++; return nil })
		if err != nil || f.ID != 33 || loads != 0 {
			t.Fatalf("got %v, %v after %d loads; want family 33, no load", f, err, loads)
		}
	})
	t.Run("loaded on demand", func(t *testing.T) {
		loads, gets := 0, 0
		f, err := lookupFamily(ctx, func() (genetlink.Family, error) {
			gets++
			if loads == 0 {
				return genetlink.Family{}, missing
			}
			return present, nil
		}, func(context.Context) error { loads++; return nil })
		if err != nil || f.ID != 33 || loads != 1 || gets != 2 {
			t.Fatalf("got %v, %v after %d loads, %d lookups; want family 33 after 1 load", f, err, loads, gets)
		}
	})
	t.Run("module missing", func(t *testing.T) {
		loads := 0
		_, err := lookupFamily(ctx, func() (genetlink.Family, error) { return genetlink.Family{}, missing },
			func(context.Context) error { loads++; return errors.New("modprobe: FATAL: Module ip_vs not found") })
		if !errors.Is(err, ErrUnavailable) || loads != 1 {
			t.Fatalf("got %v after %d loads; want ErrUnavailable after 1", err, loads)
		}
		if !strings.HasPrefix(err.Error(), "IPVS not available in this kernel: ") || !strings.Contains(err.Error(), "Module ip_vs not found") {
			t.Errorf("error %q does not say IPVS is unavailable and why", err)
		}
	})
	t.Run("still missing after load", func(t *testing.T) {
		_, err := lookupFamily(ctx, func() (genetlink.Family, error) { return genetlink.Family{}, missing },
			func(context.Context) error { return nil })
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "still missing") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("other error", func(t *testing.T) {
		loads := 0
		_, err := lookupFamily(ctx, func() (genetlink.Family, error) { return genetlink.Family{}, unix.EPERM },
			func(context.Context) error { loads++; return nil })
		if err == nil || errors.Is(err, ErrUnavailable) || loads != 0 {
			t.Fatalf("got %v after %d loads; want a plain lookup error and no load", err, loads)
		}
	})
}

// TestOpenWithoutIPVS runs against the host kernel, which has no IPVS here.
func TestOpenWithoutIPVS(t *testing.T) {
	loads := 0
	c, err := Open(context.Background(), Options{LoadModule: func(context.Context) error {
		loads++
		return errors.New("modprobe refused by the test")
	}})
	if err == nil {
		c.Close()
		t.Skip("this kernel has IPVS; the unavailable path is covered by TestLookupFamily")
	}
	if !errors.Is(err, ErrUnavailable) || loads != 1 {
		t.Fatalf("Open = %v after %d module loads; want ErrUnavailable after 1", err, loads)
	}
	if !strings.Contains(err.Error(), "IPVS not available in this kernel: ") {
		t.Errorf("error %q", err)
	}
}

func TestOpenBadNetNS(t *testing.T) {
	_, err := Open(context.Background(), Options{NetNSPath: filepath.Join(t.TempDir(), "nope")})
	if err == nil || !strings.Contains(err.Error(), "opening network namespace") {
		t.Fatalf("Open with a missing netns path: %v", err)
	}
}

func TestSysctlFiles(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{SysctlExpireNodestConn, SysctlExpireQuiescentTemplate} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeSysctl(dir, SysctlExpireNodestConn, 1); err != nil {
		t.Fatal(err)
	}
	if v, err := readSysctl(dir, SysctlExpireNodestConn); err != nil || v != 1 {
		t.Errorf("read back %d, %v; want 1", v, err)
	}
	if v, err := readSysctl(dir, SysctlExpireQuiescentTemplate); err != nil || v != 0 {
		t.Errorf("untouched knob reads %d, %v; want 0", v, err)
	}
	if err := writeSysctl(dir, "expire_everything", 1); err == nil || !strings.Contains(err.Error(), `unknown IPVS sysctl "expire_everything"`) {
		t.Errorf("unknown knob: %v", err)
	}
	err := writeSysctl(dir, SysctlConnReuseMode, 1)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "ip_vs module loaded") {
		t.Errorf("missing knob: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, SysctlConnReuseMode)); !errors.Is(err, os.ErrNotExist) {
		t.Error("writing a missing knob created a file")
	}
	if err := os.WriteFile(filepath.Join(dir, SysctlConnReuseMode), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSysctl(dir, SysctlConnReuseMode); err == nil {
		t.Error("a non-numeric knob parsed")
	}
}
