package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/director/dptest"
)

// TestMetricsBackendsMatchStatus: the scrape's per-backend series
// (backendStates) say what lvsctl status (backendsOf) says of every backend:
// up, down, drained, added at run time, removed, and a sorry server.
func TestMetricsBackendsMatchStatus(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65", "198.18.1.66", "198.18.1.67", "198.18.1.68", "198.18.1.69")
	for _, a := range []string{"198.18.1.65:80", "198.18.1.67:80", "198.18.1.68:80", "198.18.1.69:80"} {
		listen(t, a)
	}
	dir := t.TempDir()
	ctx := context.Background()
	r := startRig(t, dir, &fakeKernel{Fake: dptest.New()}, backends("198.18.1.65"))
	head := fmt.Sprintf(baseConfig, dir, "")
	head = head[:strings.Index(head, "[[service]]")]
	check := "  [service.check]\n  type = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n  rise = 1\n  fall = 1\n  initial_delay = \"10ms\"\n"
	body := head + `
[[service]]
name = "web"
address = "198.18.1.63"
port = 80
scheduler = "rr"
persistent = true
` + check + backends("198.18.1.65", "198.18.1.66", "198.18.1.67", "198.18.1.69") + `
[[service]]
name = "solo"
address = "198.18.1.63"
port = 443
scheduler = "rr"
sorry_server = "198.18.1.70"
` + check + backends("198.18.1.66")
	if err := os.WriteFile(filepath.Join(dir, "lvsd.toml"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if res, err := r.client.Reload(ctx); err != nil || !res.OK {
		t.Fatalf("reload: %+v %v", res, err)
	}
	for action, b := range map[string]string{"drain": "198.18.1.67", "add": "198.18.1.68", "remove": "198.18.1.69"} {
		if _, err := r.client.Backend(ctx, action, api.BackendRequest{Service: "web", Backend: b}); err != nil {
			t.Fatalf("%s %s: %v", action, b, err)
		}
	}
	var st api.Status
	r.eventually("health settled: .66 down in both services, the sorry server in", func() bool {
		var err error
		if st, err = r.client.Status(ctx); err != nil {
			return false
		}
		down, sorry := 0, false
		for _, s := range st.Services {
			for _, b := range s.Backends {
				down += map[bool]int{true: 1}[b.Health == "down"]
				sorry = sorry || b.Origin == "sorry"
			}
		}
		return down == 2 && sorry
	})

	resp, err := http.Get("http://127.0.0.1:19100/metrics")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	series := regexp.MustCompile(`(?m)^lvsd_backend_(up|weight)\{backend="([^"]+)",service="([^"]+)"\} (\S+)$`).FindAllStringSubmatch(string(text), -1)
	got := map[string]string{}
	for _, m := range series {
		got[m[1]+" "+m[3]+"/"+m[2]] = m[4]
	}
	want := map[string]string{}
	for _, s := range st.Services {
		for _, b := range s.Backends {
			want["weight "+s.Name+"/"+b.Address] = fmt.Sprint(b.Weight)
			want["up "+s.Name+"/"+b.Address] = map[bool]string{true: "0", false: "1"}[b.Health == "down"]
		}
	}
	if len(want) != 2*6 { // web: .65 .66 .67 .68 (.69 removed); solo: .66 and the sorry server .70
		t.Fatalf("status lists %d backend series, want 12: %+v", len(want), st.Services)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: metrics say %q, status says %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: in metrics (%s), not in status", k, got[k])
		}
	}
}
