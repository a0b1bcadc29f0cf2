// Package e2e runs lvsd, lvsctl and real traffic in network topologies:
// lab-tagged tests in the qemu VM (they need IPVS), the rest on the host.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/ctl"
	"github.com/lvsd/lvsd/daemon"
	"github.com/lvsd/lvsd/lab/topo"
)

// execLVSD as the first argument makes the test binary run lvsd's main: the
// tests start real lvsd processes (so kill -9, SIGTERM and SIGHUP are real)
// without building a separate binary inside the VM.
const execLVSD = "lvsd-e2e-exec-lvsd"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == execLVSD {
		os.Exit(daemon.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// lvsd is one lvsd process in a topology host.
type lvsd struct {
	t      testing.TB
	host   *topo.Host
	name   string
	dir    string // config, state and socket live here
	proc   *topo.Proc
	client *api.Client
	runs   []*topo.Proc // earlier processes, for their logs
}

// newLVSD prepares an lvsd for host; its config is written by writeConfig.
func newLVSD(t testing.TB, host *topo.Host, name string) *lvsd {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	d := &lvsd{t: t, host: host, name: name, dir: dir}
	d.client = api.NewUnixClient(d.socket())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lvsd %s logs:\n%s", name, d.logs())
		}
	})
	return d
}

func (d *lvsd) socket() string { return filepath.Join(d.dir, "lvsd.sock") }
func (d *lvsd) path() string   { return filepath.Join(d.dir, "lvsd.toml") }

// nodeSection is the [node] and [control] part every test config needs;
// body follows it.
func (d *lvsd) nodeSection(iface string) string {
	return fmt.Sprintf("[node]\nname = %q\ninterface = %q\nstate_dir = %q\n\n[control]\nsocket = %q\n\n",
		d.name, iface, filepath.Join(d.dir, "state"), d.socket())
}

// writeConfig writes the node section plus body as lvsd's config.
func (d *lvsd) writeConfig(iface, body string) {
	d.t.Helper()
	if err := os.WriteFile(d.path(), []byte(d.nodeSection(iface)+body), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// start runs lvsd and waits until its control socket answers.
func (d *lvsd) start() {
	d.t.Helper()
	self, err := os.Executable()
	if err != nil {
		d.t.Fatal(err)
	}
	d.proc = d.host.Start(self, execLVSD, "--config", d.path(), "--log-level", "debug")
	d.runs = append(d.runs, d.proc)
	eventually(d.t, 20*time.Second, "lvsd "+d.name+" answers on its socket", func() bool {
		if d.proc.Exited() {
			d.t.Fatalf("lvsd %s exited at start:\n%s", d.name, d.proc.Output())
		}
		_, err := d.client.Status(context.Background())
		return err == nil
	})
}

// stop sends SIGTERM and waits for lvsd to exit.
func (d *lvsd) stop() {
	d.t.Helper()
	if d.proc == nil || d.proc.Exited() {
		return
	}
	d.proc.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.proc.Wait(ctx); err != nil && ctx.Err() != nil {
		d.t.Fatalf("lvsd %s did not stop on SIGTERM", d.name)
	}
}

// kill9 kills lvsd without a chance to clean up.
func (d *lvsd) kill9() {
	d.t.Helper()
	d.proc.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.proc.Wait(ctx)
}

func (d *lvsd) hup() { d.proc.Signal(syscall.SIGHUP) }

func (d *lvsd) logs() string {
	var b strings.Builder
	for i, p := range d.runs {
		fmt.Fprintf(&b, "--- run %d (pid %d)\n%s", i+1, p.PID(), p.Output())
	}
	return b.String()
}

// ctl runs lvsctl against this lvsd.
func (d *lvsd) ctl(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = ctl.Main(ctx, append([]string{"--socket", d.socket()}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// mustCtl runs lvsctl and fails the test unless it succeeds.
func (d *lvsd) mustCtl(args ...string) string {
	d.t.Helper()
	code, out, errs := d.ctl(args...)
	if code != 0 {
		d.t.Fatalf("lvsctl %s on %s: exit %d\n%s%s", strings.Join(args, " "), d.name, code, out, errs)
	}
	return out
}

func (d *lvsd) status() api.Status {
	d.t.Helper()
	st, err := d.client.Status(context.Background())
	if err != nil {
		d.t.Fatalf("status of %s: %v", d.name, err)
	}
	return st
}

// eventually polls cond every 20 ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}
