package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
)

// recorder is a stand-in controller that records what reached it.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
}

// Status answers what lvsd sends: a persistence timeout of 500 s is "8m20s".
func (r *recorder) Status(context.Context) (api.Status, error) {
	r.add("status")
	return api.Status{
		Node: "dir-a", Mode: "cluster", Config: "/etc/lvsd/lvsd.toml",
		Members: []api.Member{{Name: "dir-a", Self: true, Alive: true}, {Name: "dir-b", Alive: true, Address: "198.18.0.12:7946", LastSeen: time.Now()}},
		Groups:  []api.Group{{Name: "web", State: "master", Owner: "dir-a", Priority: 150, BasePriority: 150, Interface: "eth0", Addresses: []string{"198.18.1.63/32"}}},
		Services: []api.Service{{Name: "web-pcc", Key: "tcp:198.18.1.63:0", Scheduler: "rr", Persistent: true, Timeout: "8m20s", QuorumUp: true, InKernel: true,
			Backends: []api.Backend{
				{Address: "198.18.1.65:0", Forward: "dr", ConfigWeight: 1, Weight: 1, Health: "up", InKernel: true, ActiveConns: 3},
				{Address: "198.18.1.66:0", Forward: "dr", ConfigWeight: 1, Weight: 0, Health: "down", Admin: "drained", InKernel: true, Reason: "connect refused"},
			}}},
	}, nil
}

func (r *recorder) Events(_ context.Context, since time.Time, limit int) ([]api.Event, error) {
	r.add("events")
	return []api.Event{{Time: time.Now(), Kind: "health", Subject: "web-pcc/198.18.1.66:0", From: "up", To: "down", Reason: "connect refused"}}, nil
}

func (r *recorder) BackendAction(_ context.Context, action string, req api.BackendRequest) (api.Backend, error) {
	if req.Service != "web-pcc" {
		return api.Backend{}, api.NotFound("lvsctl status lists the services", "unknown service %q", req.Service)
	}
	r.add(action + " " + req.Service + " " + req.Backend)
	return api.Backend{Address: req.Backend, Admin: "drained", Health: "up"}, nil
}

func (r *recorder) GroupAction(_ context.Context, action, group string) (api.Group, error) {
	if group != "web" {
		return api.Group{}, api.NotFound("lvsctl status lists the VIP groups", "unknown VIP group %q", group)
	}
	r.add(action + " " + group)
	return api.Group{Name: group, State: "backup", Owner: "dir-b"}, nil
}

func (r *recorder) Reload(context.Context) (api.CheckResult, error) {
	r.add("reload")
	return api.CheckResult{OK: false, Config: "/etc/lvsd/lvsd.toml", Errors: []string{"/etc/lvsd/lvsd.toml:7:11: weight 70000 out of range 0..65535"}}, nil
}

func (r *recorder) Connections(_ context.Context, client netip.Addr, limit int) ([]api.Conn, error) {
	r.add(fmt.Sprintf("conns %v %d", client, limit))
	return []api.Conn{
		{Service: "web-pcc", Protocol: "TCP", Client: "198.18.0.10:0", Virtual: "198.18.1.63:0", Backend: "198.18.1.66:0", State: "NONE", Expires: 487, Template: true},
		{Service: "web-pcc", Protocol: "TCP", Client: "198.18.0.10:55731", Virtual: "198.18.1.63:80", Backend: "198.18.1.66:80", State: "ESTABLISHED", Expires: 898},
	}, nil
}

func (r *recorder) CheckConfig(context.Context) (api.CheckResult, error) {
	r.add("check-config")
	return api.CheckResult{OK: true, Config: "/etc/lvsd/lvsd.toml"}, nil
}

func serve(t *testing.T) (string, *recorder) {
	t.Helper()
	rec := &recorder{}
	path := filepath.Join(t.TempDir(), "lvsd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		api.NewServer(rec, slog.New(slog.NewTextHandler(io.Discard, nil)), nil).ServeUnix(ctx, path)
	}()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(path); err == nil {
			return path, rec
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("socket did not appear")
	return "", nil
}

func lvsctl(t *testing.T, sock string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), append([]string{"--socket", sock}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestCommands(t *testing.T) {
	sock, rec := serve(t)
	for _, tc := range []struct {
		args     []string
		wantOut  []string
		wantCall string
	}{
		{[]string{"status"}, []string{"TCP  198.18.1.63:0", "rr persistent 500", "[web-pcc]", "Route", "MASTER", "dir-b", "connect refused"}, "status"},
		{[]string{"events", "--since", "5m", "--limit", "3"}, []string{"up -> down", "connect refused"}, "events"},
		{[]string{"backend", "drain", "web-pcc", "198.18.1.66"}, []string{"drain: web-pcc/198.18.1.66"}, "drain web-pcc 198.18.1.66"},
		{[]string{"backend", "undrain", "web-pcc", "198.18.1.66:80"}, []string{"undrain"}, "undrain web-pcc 198.18.1.66:80"},
		{[]string{"backend", "disable", "web-pcc", "[2001:db8::5]:80"}, []string{"disable"}, "disable web-pcc [2001:db8::5]:80"},
		{[]string{"backend", "enable", "web-pcc", "2001:db8::5"}, []string{"enable"}, "enable web-pcc 2001:db8::5"},
		{[]string{"backend", "add", "web-pcc", "198.18.1.67", "--weight", "3"}, []string{"add"}, "add web-pcc 198.18.1.67"},
		{[]string{"backend", "remove", "web-pcc", "198.18.1.67"}, []string{"remove"}, "remove web-pcc 198.18.1.67"},
		{[]string{"failover", "web"}, []string{"group web is now backup", "owner dir-b"}, "failover web"},
		{[]string{"demote", "web"}, []string{"demote"}, "demote web"},
		{[]string{"promote", "web"}, []string{"promote"}, "promote web"},
		{[]string{"check-config"}, []string{"is valid"}, "check-config"},
		{[]string{"conns", "--client", "198.18.0.10"}, []string{"198.18.0.10:0 sticks to 198.18.1.66:0 through web-pcc: persistence template, 487s left", "TEMPLATE", "ESTABLISHED"}, "conns 198.18.0.10 1000"},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			before := len(rec.calls)
			code, out, errs := lvsctl(t, sock, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %s", code, errs)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if len(rec.calls) != before+1 || rec.calls[before] != tc.wantCall {
				t.Errorf("calls = %v, want %q appended", rec.calls[before:], tc.wantCall)
			}
		})
	}
}

func TestJSONOutput(t *testing.T) {
	sock, _ := serve(t)
	code, out, _ := lvsctl(t, sock, "--json", "status")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Node != "dir-a" || len(st.Services[0].Backends) != 2 {
		t.Fatalf("json status = %+v, %v", st, err)
	}
	code, out, _ = lvsctl(t, sock, "--json", "backend", "drain", "web-pcc", "198.18.1.66")
	var b api.Backend
	if code != 0 || json.Unmarshal([]byte(out), &b) != nil || b.Admin != "drained" {
		t.Fatalf("json drain: %d %s", code, out)
	}
	// --json after the command, or after its arguments, is the same flag.
	for _, args := range [][]string{{"status", "--json"}, {"backend", "undrain", "web-pcc", "198.18.1.66", "--json"}} {
		code, out, errs := lvsctl(t, sock, args...)
		var v map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
			t.Errorf("lvsctl %v: exit %d, stdout %q, stderr %q; want JSON", args, code, out, errs)
		}
	}
}

func TestReloadOfInvalidConfigFails(t *testing.T) {
	sock, _ := serve(t)
	code, out, _ := lvsctl(t, sock, "reload")
	if code != 1 || !strings.Contains(out, "is invalid; nothing was changed") || !strings.Contains(out, "lvsd.toml:7:11: weight 70000") {
		t.Fatalf("exit %d, out %s", code, out)
	}
}

// TestBadArguments: each mistake gets a clear message, and only mistakes the
// daemon alone can judge (unknown names) reach it.
func TestBadArguments(t *testing.T) {
	sock, rec := serve(t)
	for _, tc := range []struct {
		args     []string
		code     int
		want     string
		reachesD bool
	}{
		{nil, 2, "no command given", false},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`, false},
		{[]string{"status", "extra"}, 2, "status takes no arguments", false},
		{[]string{"backend"}, 2, "backend needs an action", false},
		{[]string{"backend", "explode", "web-pcc", "198.18.1.65"}, 2, `unknown backend action "explode"`, false},
		{[]string{"backend", "drain", "web-pcc"}, 2, "takes SERVICE and BACKEND", false},
		{[]string{"backend", "drain", "web-pcc", "198.18.1"}, 2, `"198.18.1" is not ADDRESS or ADDRESS:PORT`, false},
		{[]string{"backend", "drain", "web-pcc", "2001:db8::5:80:x"}, 2, "is not ADDRESS or ADDRESS:PORT", false},
		{[]string{"backend", "drain", "web-pcc", "198.18.1.65", "--weight", "2"}, 2, "--weight applies to backend add only", false},
		{[]string{"backend", "add", "web-pcc", "198.18.1.65", "--weight", "70000"}, 2, "--weight must be 0..65535", false},
		{[]string{"backend", "add", "web-pcc", "198.18.1.65", "--weight", "x"}, 2, "invalid value", false},
		{[]string{"failover"}, 2, "failover takes one VIP group name", false},
		{[]string{"events", "--since", "yesterday"}, 2, "neither a duration", false},
		{[]string{"events", "--limit", "0"}, 2, "--limit must be 1..10000", false},
		{[]string{"conns", "--client", "nobody"}, 2, `--client "nobody" is not an IP address`, false},
		{[]string{"conns", "extra"}, 2, "conns takes no positional arguments", false},
		{[]string{"backend", "drain", "nope", "198.18.1.65"}, 1, `unknown service "nope"`, true},
		{[]string{"failover", "nope"}, 1, `unknown VIP group "nope"`, true},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			before := len(rec.calls)
			code, _, errs := lvsctl(t, sock, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d stderr %q; want exit %d containing %q", code, errs, tc.code, tc.want)
			}
			if tc.reachesD && !strings.Contains(errs, "hint:") {
				t.Errorf("daemon error without a hint: %q", errs)
			}
			if len(rec.calls) != before {
				t.Fatalf("a rejected command changed state: %v", rec.calls[before:])
			}
		})
	}
}

func TestNoDaemon(t *testing.T) {
	code, _, errs := lvsctl(t, filepath.Join(t.TempDir(), "missing.sock"), "status")
	if code != 1 || !strings.Contains(errs, "cannot reach lvsd") || !strings.Contains(errs, "is lvsd running") {
		t.Fatalf("exit %d stderr %q", code, errs)
	}
}

func TestURLNeedsToken(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"--url", "http://198.18.0.11:9080", "status"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--token-file") {
		t.Fatalf("exit %d stderr %q", code, errb.String())
	}
}

func TestMaskString(t *testing.T) {
	for _, tc := range []struct {
		key  string
		bits int
		want string
	}{
		{"tcp:198.18.1.63:0", 24, "255.255.255.0"},
		{"fwm:8/ipv4", 16, "255.255.0.0"},
		{"tcp:[2001:db8::1]:80", 64, "/64"},
		{"fwm:8/ipv6", 48, "/48"},
	} {
		if got := maskString(tc.key, tc.bits); got != tc.want {
			t.Errorf("maskString(%q, %d) = %q, want %q", tc.key, tc.bits, got, tc.want)
		}
	}
}
