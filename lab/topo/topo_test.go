package topo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces (CI runs as root)")
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestHostsTalkOverTheSwitch(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	tp := New(t)
	client := tp.Host("client", "198.18.0.10/24", "2001:db8::10/64")
	rs1 := tp.Host("rs1", "198.18.0.21/24", "2001:db8::21/64")
	rs1.ServeHTTP(":80")
	rs1.ServeIdentify(":7")
	ctx := ctxT(t, 20*time.Second)

	for _, url := range []string{"http://198.18.0.21/", "http://[2001:db8::21]/"} {
		got, err := client.HTTPGet(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		if got != "rs1" {
			t.Errorf("GET %s answered %q, want rs1", url, got)
		}
	}
	got, err := client.Identify(ctx, "198.18.0.21:7")
	if err != nil {
		t.Fatal(err)
	}
	if got != "rs1" {
		t.Errorf("identify answered %q, want rs1", got)
	}
	// The echo half of the identify server.
	c, err := client.Dial(ctx, "tcp", "[2001:db8::21]:7")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if l, _ := r.ReadString('\n'); l != "rs1\n" {
		t.Fatalf("greeting %q, want rs1", l)
	}
	fmt.Fprintf(c, "ping\n")
	if l, _ := r.ReadString('\n'); l != "ping\n" {
		t.Errorf("echo %q, want ping", l)
	}
	// The client learned rs1's real MAC.
	mac, ok := client.Neighbor("198.18.0.21")
	if !ok || mac.String() != rs1.MAC("").String() {
		t.Errorf("client's neighbour entry for rs1: %v (ok=%v), want %v", mac, ok, rs1.MAC(""))
	}
	if _, ok := client.Neighbor("198.18.0.99"); ok {
		t.Errorf("neighbour entry for an address nobody has")
	}
}

func TestNothingInCallersNamespaceAndCloseRemovesAll(t *testing.T) {
	requireRoot(t)
	before, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	tp := New(t)
	a := tp.Host("a", "198.18.0.1/24")
	a.AddInterface("eth1", "198.18.4.1/24")
	tp.Host("b", "198.18.0.2/24")
	after, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("links in the caller's namespace: %d before, %d after building a topology", len(before), len(after))
	}
	names := prefixed(t, tp.Prefix())
	if len(names) != 3 {
		t.Errorf("namespaces of %s: %v, want sw, a and b", tp.Prefix(), names)
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	if left := prefixed(t, tp.Prefix()); len(left) != 0 {
		t.Errorf("after Close, namespaces left: %v", left)
	}
	if err := tp.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func prefixed(t *testing.T, prefix string) []string {
	t.Helper()
	ents, err := os.ReadDir(netnsDir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestLinkDownCutsHostOff(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	tp := New(t)
	client := tp.Host("client", "198.18.0.10/24")
	srv := tp.Host("srv", "198.18.0.20/24")
	srv.ServeIdentify(":9000")
	try := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := client.Identify(ctx, "198.18.0.20:9000")
		return err
	}
	if err := try(); err != nil {
		t.Fatalf("before LinkDown: %v", err)
	}
	srv.LinkDown()
	if err := try(); err == nil {
		t.Fatal("reached srv after its port went down")
	}
	srv.LinkUp()
	// The port needs a moment to forward again; bounded retries.
	var err error
	for i := 0; i < 50; i++ {
		if err = try(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after LinkUp: %v", err)
	}
}

func TestRunAndStartInsideTheNamespace(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	tp := New(t)
	h := tp.Host("h", "198.18.0.5/24")
	ctx := ctxT(t, 20*time.Second)
	var st syscall.Stat_t
	if err := syscall.Stat(h.NetnsPath(), &st); err != nil {
		t.Fatal(err)
	}
	out, err := h.Run(ctx, "readlink", "/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("net:[%d]", st.Ino); strings.TrimSpace(out) != want {
		t.Errorf("Run's process is in %s, want %s", strings.TrimSpace(out), want)
	}
	if _, err := h.Run(ctx, "false"); err == nil || !strings.Contains(err.Error(), "false") {
		t.Errorf("failing command: err %v, want one naming it", err)
	}
	p := h.Start("sh", "-c", "echo started; exec sleep 300")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.Output(), "started") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(p.Output(), "started") {
		t.Fatalf("no output from started process: %q", p.Output())
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.PID()))
	if err != nil || link != fmt.Sprintf("net:[%d]", st.Ino) {
		t.Errorf("Start's process netns %q (%v), want the host's", link, err)
	}
	if p.Exited() {
		t.Fatal("sleep exited early")
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctx); err == nil {
		t.Error("SIGTERMed sleep reported success")
	}
	// A process left running is killed by Close.
	q := h.Start("sleep", "300")
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	if !q.Exited() {
		t.Error("process still running after Close")
	}
}

func TestRoutesAndSysctls(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	tp := New(t)
	client := tp.Host("client", "198.18.0.10/24")
	router := tp.Host("router", "198.18.0.1/24", "198.18.2.1/24")
	srv := tp.Host("srv", "198.18.2.20/24")
	router.Sysctl("net.ipv4.ip_forward", "1")
	client.AddRoute("198.18.2.0/24", "198.18.0.1")
	srv.AddRoute("default", "198.18.2.1")
	srv.ServeHTTP("198.18.2.20:8080")
	got, err := client.HTTPGet(ctxT(t, 20*time.Second), "http://198.18.2.20:8080/")
	if err != nil || got != "srv" {
		t.Fatalf("routed GET: %q, %v", got, err)
	}
	srv.AddLoopbackVIP("198.18.1.100")
	var v []byte
	if err := srv.Do(func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/net/ipv4/conf/eth0/arp_ignore")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(v)) != "1" {
		t.Errorf("arp_ignore on eth0 = %q after AddLoopbackVIP, want 1", v)
	}
	addrs, err := srv.Netlink().AddrList(mustLink(t, srv, "lo"), netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		found = found || a.IPNet.String() == "198.18.1.100/32"
	}
	if !found {
		t.Errorf("VIP not on lo: %v", addrs)
	}
}

func mustLink(t *testing.T, h *Host, name string) netlink.Link {
	l, err := h.Netlink().LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// fakeTB records Fatalf and stops the calling function, like testing.T.
type fakeTB struct {
	testing.TB
	fatal string
}

type fatalPanic struct{}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	panic(fatalPanic{})
}

func catchFatal(f *fakeTB, fn func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(fatalPanic); !ok {
				panic(r)
			}
			msg = f.fatal
		}
	}()
	fn()
	return ""
}

func TestBadInputIsNamed(t *testing.T) {
	requireRoot(t)
	f := &fakeTB{TB: t}
	tp := New(f)
	for _, tc := range []struct {
		fn   func()
		want string
	}{
		{func() { tp.Host("x", "10.0.0.1/24") }, `"10.0.0.1/24": outside the test networks`},
		{func() { tp.Host("y", "198.18.0.1") }, `"198.18.0.1": want CIDR`},
		{func() { tp.Host("Bad_Name") }, `host "Bad_Name": bad name`},
		{func() { tp.Host("sw") }, `bad name`},
	} {
		got := catchFatal(f, tc.fn)
		if !strings.Contains(got, tc.want) {
			t.Errorf("fatal %q, want it to contain %q", got, tc.want)
		}
	}
	h := tp.Host("ok", "198.18.0.1/24")
	if got := catchFatal(f, func() { tp.Host("ok") }); !strings.Contains(got, "exists") {
		t.Errorf("duplicate host: %q", got)
	}
	if got := catchFatal(f, func() { h.AddRoute("nonsense", "198.18.0.9") }); !strings.Contains(got, `route "nonsense"`) {
		t.Errorf("bad route: %q", got)
	}
	if got := catchFatal(f, func() { h.Sysctl("../etc/passwd", "x") }); !strings.Contains(got, "sysctl key") {
		t.Errorf("bad sysctl: %q", got)
	}
	if got := catchFatal(f, func() { h.SetPort("eth9", false) }); !strings.Contains(got, "eth9") {
		t.Errorf("bad port: %q", got)
	}
}

func TestSweepRemovesOnlyDeadRuns(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf("lvt%dx1-left", cmd.Process.Pid) // reaped: the pid is free
	alive := fmt.Sprintf("lvt%dx999999-mine", os.Getpid())
	for _, n := range []string{dead, alive} {
		h, err := newNamedNS(n)
		if err != nil {
			t.Fatal(err)
		}
		h.Close()
	}
	t.Cleanup(func() { deleteNamedNS(alive); deleteNamedNS(dead) })
	if pidAlive(cmd.Process.Pid) {
		t.Skip("pid of the dead helper was reused already")
	}
	Sweep()
	// Another process's topo.New may have swept it first; either way it
	// must be gone.
	if _, err := os.Stat(filepath.Join(netnsDir, dead)); !os.IsNotExist(err) {
		t.Errorf("dead run's namespace %s still there after Sweep (stat: %v)", dead, err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, alive)); err != nil {
		t.Errorf("Sweep removed a live run's namespace: %v", err)
	}
}

func TestPrefixPID(t *testing.T) {
	for name, want := range map[string]int{"lvt123x4-client": 123, "lvt1x1-sw": 1, "lvt12x-": 12} {
		if got, ok := prefixPID(name); !ok || got != want {
			t.Errorf("prefixPID(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
	for _, name := range []string{"lvtx1-a", "foo", "lvt12x1", "lvt-3x1-a", "lvtabcx1-a"} {
		if _, ok := prefixPID(name); ok {
			t.Errorf("prefixPID(%q) accepted", name)
		}
	}
}

const childEnv = "LVSD_TOPO_INTERRUPT_CHILD"

// TestInterruptChild is the child half of TestInterruptCleansUp.
func TestInterruptChild(t *testing.T) {
	if os.Getenv(childEnv) != "1" {
		t.Skip("helper process for TestInterruptCleansUp")
	}
	tp := New(t)
	a := tp.Host("a", "198.18.0.1/24")
	tp.Host("b", "198.18.0.2/24")
	a.ServeHTTP(":80")
	p := a.Start("sleep", "300")
	fmt.Printf("READY %s %d\n", tp.Prefix(), p.PID())
	time.Sleep(60 * time.Second) // the parent interrupts long before
	t.Fatal("not interrupted")
}

// TestInterruptCleansUp proves Ctrl-C leaves nothing behind: a child test
// process builds a topology with a server process, gets SIGINT, and must
// leave no namespace (hence no bridge or veth) and no process of its own.
func TestInterruptCleansUp(t *testing.T) {
	requireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 60*time.Second)
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestInterruptChild$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var prefix string
	var pid int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "READY" {
			prefix = f[1]
			pid, _ = strconv.Atoi(f[2])
			break
		}
	}
	if prefix == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child never got ready; stderr:\n%s", stderr.String())
	}
	if len(prefixed(t, prefix)) != 3 || !pidAlive(pid) {
		t.Fatalf("child's topology not up: namespaces %v, sleep alive %v", prefixed(t, prefix), pidAlive(pid))
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	go func() { // drain so the child never blocks on a full pipe
		for sc.Scan() {
		}
	}()
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child exit: %v, want death by SIGINT", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("child status %v, want killed by SIGINT after cleanup", ee)
	}
	if left := prefixed(t, prefix); len(left) != 0 {
		t.Errorf("namespaces left after SIGINT: %v", left)
	}
	gone := false
	for i := 0; i < 50 && !gone; i++ { // reaping by init may lag
		gone = !pidAlive(pid) || isZombie(pid)
		if !gone {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !gone {
		t.Errorf("server process %d still running after SIGINT", pid)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}
