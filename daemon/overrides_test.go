package daemon

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/director/dptest"
)

func TestOverridesFile(t *testing.T) {
	dir := t.TempDir()
	path := overridesPath(dir)
	got, err := loadOverrides(path)
	if err != nil || len(got) != 0 {
		t.Fatalf("missing file: %v %v, want empty", got, err)
	}
	since := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	want := map[string]groupOverride{"web": {Override: "demote", Since: since}, "db": {Override: "promote", Since: since}}
	if err := saveOverrides(path, want); err != nil {
		t.Fatal(err)
	}
	got, err = loadOverrides(path)
	if err != nil || len(got) != 2 || got["web"] != want["web"] || got["db"] != want["db"] {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for name, c := range map[string]struct{ body, want string }{
		"not json":         {`{"format": 1, "groups": {`, path},
		"format":           {`{"format": 2, "groups": {}}`, "unsupported format 2"},
		"unknown override": {`{"format": 1, "groups": {"web": {"override": "fault"}}}`, `group "web": unknown override "fault"`},
	} {
		if err := os.WriteFile(path, []byte(c.body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadOverrides(path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want it to mention %q", name, err, c.want)
		}
	}
}

func groupOf(t *testing.T, r *rig, name string) api.Group {
	t.Helper()
	st, err := r.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range st.Groups {
		if g.Name == name {
			return g
		}
	}
	t.Fatalf("no group %q in status", name)
	return api.Group{}
}

// A director demoted before patching must not take the VIP back when lvsd
// restarts: the demotion is persisted until `lvsctl clear`.
func TestEngineDemoteSurvivesRestart(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65")
	listen(t, "198.18.1.65:80")
	dir := t.TempDir()
	ctx := context.Background()
	r := startRig(t, dir, &fakeKernel{Fake: dptest.New()}, backends("198.18.1.65"))
	r.eventually("the standalone node owns the VIP", func() bool { return hasAddr(t, "198.18.1.63") })

	// With no other director to take it, failover refuses and changes nothing.
	if _, err := r.client.Group(ctx, "failover", "web"); err == nil || !strings.Contains(err.Error(), "no other director is alive and eligible for group web") {
		t.Fatalf("failover with no peer: err %v, want a refusal", err)
	}
	if g := groupOf(t, r, "web"); g.Override != "" || g.State != "master" {
		t.Fatalf("a refused failover changed the group: %+v", g)
	}
	if _, err := os.Stat(overridesPath(filepath.Join(dir, "state"))); !os.IsNotExist(err) {
		t.Fatalf("a refused failover wrote the overrides file (stat: %v)", err)
	}

	g, err := r.client.Group(ctx, "demote", "web")
	if err != nil {
		t.Fatal(err)
	}
	if g.Override != "demote" || g.Priority != 1 || g.OverrideSince.IsZero() {
		t.Fatalf("after demote: %+v", g)
	}
	resp, err := http.Get("http://127.0.0.1:19100/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `lvsd_vip_group_override{group="web",override="demote"} 1`) {
		t.Errorf("metrics do not show the demotion:\n%s", body)
	}
	saved, err := loadOverrides(overridesPath(filepath.Join(dir, "state")))
	if err != nil || saved["web"].Override != "demote" || !saved["web"].Since.Equal(g.OverrideSince) {
		t.Fatalf("state file after demote: %v %v (status says since %v)", saved, err, g.OverrideSince)
	}
	r.stop()

	r = startRig(t, dir, &fakeKernel{Fake: dptest.New()}, backends("198.18.1.65"))
	if g := groupOf(t, r, "web"); g.Override != "demote" || g.Priority != 1 || !g.OverrideSince.Equal(saved["web"].Since) {
		t.Fatalf("after restart: %+v, want the saved demotion", g)
	}
	if !strings.Contains(r.logs.String(), "override restored") {
		t.Errorf("restart did not log the restored override:\n%s", r.logs)
	}

	// A failed write changes nothing: the override stays as it was.
	path := overridesPath(filepath.Join(dir, "state"))
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "blocker"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := r.client.Group(ctx, "clear", "web"); err == nil || !strings.Contains(err.Error(), "persist VIP group overrides") {
		t.Fatalf("clear with an unwritable state file: err %v", err)
	}
	if g := groupOf(t, r, "web"); g.Override != "demote" {
		t.Fatalf("a failed clear changed the override: %+v", g)
	}
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}

	g, err = r.client.Group(ctx, "clear", "web")
	if err != nil {
		t.Fatal(err)
	}
	if g.Override != "" || g.Priority == 1 {
		t.Fatalf("after clear: %+v", g)
	}
	if saved, err := loadOverrides(path); err != nil || len(saved) != 0 {
		t.Fatalf("state file after clear: %v %v", saved, err)
	}
}
