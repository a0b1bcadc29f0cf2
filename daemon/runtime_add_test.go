package daemon

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/director/dptest"
	"github.com/lvsd/lvsd/opstate"
)

// pccChecked is a port-0 DR service whose service-level tcp check has no
// port: each configured backend gives its own.
const pccChecked = `
[node]
name = "dir-t"
interface = "lvt0"
state_dir = "DIR/state"
[control]
socket = "DIR/lvsd.sock"
[ipvs]
resync_interval = "0s"
[[service]]
name = "pcc"
address = "198.18.1.63"
port = 0
persistence = "60s"
  [service.check]
  type = "tcp"
  interval = "100ms"
  timeout = "50ms"
  rise = 1
  fall = 1
  initial_delay = "10ms"
  [[service.backend]]
  address = "198.18.1.65"
    [service.backend.check]
    port = 80
`

// TestRuntimeAddNeedsCheckPort: lvsctl backend add refuses a backend its
// service's check cannot reach (no port anywhere), changing nothing; a
// record like that persisted by an older lvsd leaves that backend
// unchecked (with an error) instead of stopping every check, or the start.
func TestRuntimeAddNeedsCheckPort(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65", "198.18.1.67")
	listen(t, "198.18.1.65:80")
	dir := t.TempDir()
	ctx := context.Background()
	if err := os.WriteFile(filepath.Join(dir, "lvsd.toml"), []byte(strings.ReplaceAll(pccChecked, "DIR", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runRig(t, dir, &fakeKernel{Fake: dptest.New()})
	_, err := r.client.Backend(ctx, "add", api.BackendRequest{Service: "pcc", Backend: "198.18.1.67"})
	if err == nil || !strings.Contains(err.Error(), "service pcc's tcp check needs a port and backend 198.18.1.67:0 has none") ||
		!strings.Contains(err.Error(), "set port in the service's [service.check]") {
		t.Fatalf("add: err %v, want a refusal saying what to do", err)
	}
	for _, bad := range []string{"0.0.0.0", "224.0.0.1"} {
		if _, err := r.client.Backend(ctx, "add", api.BackendRequest{Service: "pcc", Backend: bad}); err == nil || !strings.Contains(err.Error(), "cannot be a real server") {
			t.Errorf("add %s: err %v, want a refusal", bad, err)
		}
	}
	st, _ := r.client.Status(ctx)
	if n := len(st.Services[0].Backends); n != 1 {
		t.Fatalf("a refused add changed the service: %d backends", n)
	}
	r.stop()

	// As an older lvsd would have persisted it.
	store, err := opstate.Open("dir-t", filepath.Join(dir, "state", "runtime.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(opstate.Record{Service: "pcc", Backend: netip.MustParseAddrPort("198.18.1.67:0"), Added: true, Weight: 1}); err != nil {
		t.Fatal(err)
	}
	r = runRig(t, dir, &fakeKernel{Fake: dptest.New()})
	r.eventually("the configured backend checked up, the added one unchecked", func() bool {
		st, err := r.client.Status(ctx)
		if err != nil || len(st.Services) != 1 || len(st.Services[0].Backends) != 2 {
			return false
		}
		b := st.Services[0].Backends
		return b[0].Health == "up" && b[1].Health == "unchecked"
	})
	if !strings.Contains(r.logs.String(), "backend left unchecked") {
		t.Errorf("no error logged for the unchecked backend:\n%s", r.logs)
	}
}

// TestRuntimeWeightEndsWithRemove: a backend added at run time with a
// weight keeps it when the config gains the backend, until remove; added
// back, it has the config's weight, and --weight is refused (it is a
// configured backend now).
func TestRuntimeWeightEndsWithRemove(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65", "198.18.1.66")
	listen(t, "198.18.1.65:80")
	listen(t, "198.18.1.66:80")
	dir := t.TempDir()
	ctx := context.Background()
	r := startRig(t, dir, &fakeKernel{Fake: dptest.New()}, backends("198.18.1.65"))
	seven := 7
	if _, err := r.client.Backend(ctx, "add", api.BackendRequest{Service: "web", Backend: "198.18.1.66", Weight: &seven}); err != nil {
		t.Fatal(err)
	}
	r.writeConfig(backends("198.18.1.65", "198.18.1.66"))
	if res, err := r.client.Reload(ctx); err != nil || !res.OK {
		t.Fatalf("reload: %+v %v", res, err)
	}
	r.eventually("the runtime weight outlasts the config's", func() bool { return r.dests()["198.18.1.66"] == 7 })
	for _, action := range []string{"remove", "add"} {
		if _, err := r.client.Backend(ctx, action, api.BackendRequest{Service: "web", Backend: "198.18.1.66"}); err != nil {
			t.Fatalf("%s: %v", action, err)
		}
	}
	r.eventually("added back with the config's weight", func() bool { return r.dests()["198.18.1.66"] == 1 })
	three := 3
	if _, err := r.client.Backend(ctx, "remove", api.BackendRequest{Service: "web", Backend: "198.18.1.66"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.client.Backend(ctx, "add", api.BackendRequest{Service: "web", Backend: "198.18.1.66", Weight: &three}); err == nil ||
		!strings.Contains(err.Error(), "--weight applies to new backends") {
		t.Fatalf("add --weight of a configured backend: %v, want a refusal", err)
	}
}
