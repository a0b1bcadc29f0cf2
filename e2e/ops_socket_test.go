package e2e

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsd/lvsd/ctl"
	"github.com/lvsd/lvsd/lab/topo"
)

// execLVSCTL as the first argument makes the test binary run lvsctl's main,
// so a test can run lvsctl as another user without building anything. It
// is dispatched from init, before TestMain.
const execLVSCTL = "lvsd-e2e-exec-lvsctl"

func init() {
	if len(os.Args) > 1 && os.Args[1] == execLVSCTL {
		os.Exit(ctl.Main(context.Background(), os.Args[2:], os.Stdout, os.Stderr))
	}
}

// nobody is the unprivileged user lvsctl runs as.
const nobody = 65534

// publicCopy copies the test binary into a fresh world-readable directory
// (go test binaries live in 0700 directories) and returns its path.
func publicCopy(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "lvsd-e2e-ctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "lvsctl")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// ctlAs runs lvsctl (bin, see publicCopy) as uid (and gid) against sock.
func ctlAs(t *testing.T, bin string, uid uint32, sock string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{execLVSCTL, "--socket", sock}, args...)...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("run lvsctl as uid %d: %v", uid, err)
		}
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// openUp makes dir and its parents up to the temp directory traversable by
// everyone, so what keeps a user out is the socket itself, not a
// directory on its path.
func openUp(t *testing.T, dir string) {
	t.Helper()
	tmp := filepath.Clean(os.TempDir())
	for p := filepath.Clean(dir); strings.HasPrefix(p, tmp+"/"); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOpsSocketNotRoot: a user who is not root cannot use lvsd's control
// socket. The socket is root's, mode 0600, so connecting fails; and were
// its mode opened by mistake, lvsd still refuses a caller whose peer
// credentials are not root's. Neither attempt changes anything. It needs
// no IPVS (a VIP group and no services), so it runs on the host too.
func TestOpsSocketNotRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces, and a second user to run lvsctl as")
	}
	tp := topo.New(t)
	h := tp.Host("dir-a", "198.18.0.11/24")
	d := newLVSD(t, h, "dir-a")
	d.writeConfig("eth0", `
[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]
`)
	openUp(t, d.dir)
	d.start()
	eventually(t, 30*time.Second, "lvsd owns the VIP group", func() bool {
		st := d.status()
		return len(st.Groups) == 1 && st.Groups[0].State == "master"
	})

	fi, err := os.Stat(d.socket())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("control socket: mode %v uid %d, want a socket, 0600, root's", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid)
	}

	bin := publicCopy(t)
	// The same binary as root works: the helper is sound.
	code, out, errs := ctlAs(t, bin, 0, d.socket(), "status")
	if code != 0 || !strings.Contains(out, "web") {
		t.Fatalf("lvsctl status as root: exit %d\n%s%s", code, out, errs)
	}

	refused := func(layer string) {
		t.Helper()
		for _, args := range [][]string{{"status"}, {"--json", "events"}, {"demote", "web"}, {"reload"}} {
			code, out, errs := ctlAs(t, bin, nobody, d.socket(), args...)
			t.Logf("%s: lvsctl %s as uid %d: exit %d: %s", layer, strings.Join(args, " "), nobody, code, strings.TrimSpace(errs))
			if code != 1 || out != "" {
				t.Fatalf("%s: lvsctl %s as uid %d: exit %d, want 1 and nothing on stdout\n%s%s", layer, strings.Join(args, " "), nobody, code, out, errs)
			}
			for _, want := range []string{"permission denied", "hint: run lvsctl as root"} {
				if !strings.Contains(errs, want) {
					t.Fatalf("%s: lvsctl %s as uid %d: stderr lacks %q:\n%s", layer, strings.Join(args, " "), nobody, want, errs)
				}
			}
		}
		st := d.status()
		if st.Groups[0].State != "master" || strings.Contains(st.Groups[0].Reason, "override") {
			t.Fatalf("%s: a refused demote changed the group: %+v", layer, st.Groups[0])
		}
		if evs := d.mustCtl("events"); strings.Contains(evs, "operator") || strings.Contains(evs, "reload") {
			t.Fatalf("%s: refused commands left events:\n%s", layer, evs)
		}
	}
	// Layer 1: the socket's mode.
	refused("socket mode 0600")
	// Layer 2: the socket opened to everyone by mistake; lvsd checks the
	// caller's credentials.
	if err := os.Chmod(d.socket(), 0o666); err != nil {
		t.Fatal(err)
	}
	refused("socket mode 0666, peer credentials")
	if err := os.Chmod(d.socket(), 0o600); err != nil {
		t.Fatal(err)
	}
}
