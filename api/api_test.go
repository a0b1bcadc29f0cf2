package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeController records calls; it stands in for the daemon.
type fakeController struct {
	mu      sync.Mutex
	calls   []string
	drained map[string]bool
}

func (f *fakeController) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeController) Status(ctx context.Context) (Status, error) {
	f.record("status")
	return Status{Node: "dir-a", Mode: "standalone", Services: []Service{{Name: "web", Backends: []Backend{{Address: "198.18.1.65:80"}}}}}, nil
}

func (f *fakeController) Events(ctx context.Context, since time.Time, limit int) ([]Event, error) {
	f.record(fmt.Sprintf("events %d %v", limit, since.IsZero()))
	return []Event{{Kind: "health", Subject: "web/198.18.1.65:80", To: "down", Reason: "connect refused"}}, nil
}

func (f *fakeController) BackendAction(ctx context.Context, action string, req BackendRequest) (Backend, error) {
	f.record(action + " " + req.Service + " " + req.Backend)
	if req.Service != "web" {
		return Backend{}, NotFound("lvsctl status lists services", "unknown service %q", req.Service)
	}
	return Backend{Address: req.Backend, Admin: "drained"}, nil
}

func (f *fakeController) GroupAction(ctx context.Context, action, group string) (Group, error) {
	f.record(action + " " + group)
	if group == "boom" {
		return Group{}, errors.New("netlink exploded")
	}
	return Group{Name: group, State: "backup"}, nil
}

func (f *fakeController) Reload(ctx context.Context) (CheckResult, error) {
	f.record("reload")
	return CheckResult{OK: false, Config: "/etc/lvsd/lvsd.toml", Errors: []string{"lvsd.toml:3:1: bad"}}, nil
}

func (f *fakeController) Connections(ctx context.Context, client netip.Addr, limit int) ([]Conn, error) {
	f.record(fmt.Sprintf("conns %v %d", client, limit))
	return []Conn{{Client: "198.18.0.10:0", Backend: "198.18.1.66:0", Template: true}}, nil
}

func (f *fakeController) CheckConfig(ctx context.Context) (CheckResult, error) {
	f.record("check")
	return CheckResult{OK: true, Config: "/etc/lvsd/lvsd.toml"}, nil
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startUnix serves the API on a socket in dir and returns its path.
func startUnix(t *testing.T, dir string, ctl Controller) string {
	t.Helper()
	path := filepath.Join(dir, "lvsd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := NewServer(ctl, quietLog(), nil)
	go func() { done <- srv.ServeUnix(ctx, path) }()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(path); err == nil {
			return path
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("socket did not appear")
	return ""
}

func TestUnixSocketRoundTrip(t *testing.T) {
	ctl := &fakeController{}
	path := startUnix(t, t.TempDir(), ctl)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	c := NewUnixClient(path)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || st.Node != "dir-a" || len(st.Services) != 1 {
		t.Fatalf("status = %+v, %v", st, err)
	}
	b, err := c.Backend(ctx, "drain", BackendRequest{Service: "web", Backend: "198.18.1.65:80"})
	if err != nil || b.Admin != "drained" {
		t.Fatalf("drain = %+v, %v", b, err)
	}
	_, err = c.Backend(ctx, "drain", BackendRequest{Service: "nope", Backend: "198.18.1.65:80"})
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || !strings.Contains(ae.Msg, `unknown service "nope"`) || ae.Hint == "" {
		t.Fatalf("unknown service error = %#v", err)
	}
	if _, err := c.Group(ctx, "failover", "boom"); !errors.As(err, &ae) || ae.Status != 500 {
		t.Fatalf("internal error = %#v", err)
	}
	res, err := c.Reload(ctx)
	if err != nil || res.OK || len(res.Errors) != 1 {
		t.Fatalf("invalid reload = %+v, %v", res, err)
	}
	res, err = c.CheckConfig(ctx)
	if err != nil || !res.OK {
		t.Fatalf("check = %+v, %v", res, err)
	}
	conns, err := c.Connections(ctx, netip.MustParseAddr("198.18.0.10"), 10)
	if err != nil || len(conns) != 1 || !conns[0].Template {
		t.Fatalf("connections = %+v, %v", conns, err)
	}
	ev, err := c.Events(ctx, time.Time{}, 5)
	if err != nil || len(ev) != 1 || ev[0].Reason != "connect refused" {
		t.Fatalf("events = %+v, %v", ev, err)
	}
}

func TestBadRequestsReachNoController(t *testing.T) {
	ctl := &fakeController{}
	srv := NewServer(ctl, quietLog(), nil)
	for _, tc := range []struct{ method, path, body, want string }{
		{"POST", "/v1/backend/explode", `{"service":"web","backend":"198.18.1.65"}`, "unknown backend action"},
		{"POST", "/v1/backend/drain", `{"service":"web"}`, "service and backend are required"},
		{"POST", "/v1/backend/drain", `{"service":"web","backend":"x","colour":"red"}`, "unknown field"},
		{"POST", "/v1/backend/drain", `{"service":"web","backend":"x","weight":3}`, "weight given to drain"},
		{"POST", "/v1/backend/drain", `not json`, "bad request body"},
		{"POST", "/v1/backend/drain", `{"service":"web","backend":"198.18.1.65"} {"service":"db"}`, "data after the JSON object"},
		{"POST", "/v1/backend/drain", `{"service":"web","backend":"198.18.1.65"}}`, "data after the JSON object"},
		{"POST", "/v1/backend/drain", `{"service":"web","backend":"198.18.1.65"} ]]garbage`, "data after the JSON object"},
		{"POST", "/v1/backend/drain", `{"service":"web","backend":"` + strings.Repeat("x", 1<<20) + `"}`, "request body larger than 1048576 bytes"},
		{"POST", "/v1/group/failover", `{}`, "group is required"},
		{"POST", "/v1/group/teleport", `{"group":"web"}`, "unknown group action"},
		{"GET", "/v1/events?limit=0", ``, "bad limit"},
		{"GET", "/v1/events?since=yesterday", ``, "bad since"},
		{"GET", "/v1/connections?client=nobody", ``, "bad client"},
		{"GET", "/v1/connections?limit=-1", ``, "bad limit"},
	} {
		req, _ := http.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		if rec.Code/100 != 4 || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("%s %s %s: got %d %s, want 4xx containing %q", tc.method, tc.path, tc.body, rec.Code, rec.Body.String(), tc.want)
		}
	}
	if len(ctl.calls) != 0 {
		t.Fatalf("controller was called for bad requests: %v", ctl.calls)
	}
}

func TestTCPNeedsToken(t *testing.T) {
	ctl := &fakeController{}
	srv := NewServer(ctl, quietLog(), []byte("s3cret"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeTCP(ctx, addr) }()
	t.Cleanup(func() { cancel(); <-done })
	var err2 error
	for i := 0; i < 200; i++ {
		if _, err2 = NewTCPClient("http://"+addr, "s3cret").Status(context.Background()); err2 == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err2 != nil {
		t.Fatalf("good token refused: %v", err2)
	}
	_, err = NewTCPClient("http://"+addr, "wrong").Status(context.Background())
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Fatalf("wrong token: %v", err)
	}
	if err := NewServer(ctl, quietLog(), nil).ServeTCP(context.Background(), "127.0.0.1:0"); err == nil {
		t.Fatal("TCP without a token must be refused")
	}
}

func TestLiveSocketIsNotStolen(t *testing.T) {
	dir := t.TempDir()
	path := startUnix(t, dir, &fakeController{})
	if _, err := ListenUnix(path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
}

func TestClientExplainsMissingDaemon(t *testing.T) {
	_, err := NewUnixClient(filepath.Join(t.TempDir(), "none.sock")).Status(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is lvsd running") {
		t.Fatalf("error = %v", err)
	}
}

// TestNonRootIsRefused runs a client as user nobody: the socket's mode stops
// it, and if the mode were loosened the peer-credential check still does.
func TestNonRootIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	base, err := os.MkdirTemp("", "lvsd-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	path := startUnix(t, base, &fakeController{})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "client.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func() string {
		cmd := exec.Command(bin, "-test.run=^TestHelperClient$")
		cmd.Env = []string{"LVSD_API_TEST_SOCKET=" + path}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if out := run(); !strings.Contains(out, "RESULT: cannot open control socket") || !strings.Contains(out, "permission denied") {
		t.Fatalf("nobody with a 0600 socket: %s", out)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if out := run(); !strings.Contains(out, "RESULT: permission denied (run lvsctl as root)") {
		t.Fatalf("nobody with a 0666 socket: %s", out)
	}
}

// TestHelperClient is the client half of TestNonRootIsRefused.
func TestHelperClient(t *testing.T) {
	path := os.Getenv("LVSD_API_TEST_SOCKET")
	if path == "" {
		t.Skip("helper process only")
	}
	_, err := NewUnixClient(path).Status(context.Background())
	fmt.Printf("RESULT: %v\n", err)
}
