package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/director/dptest"
)

// TestEngineReloadUpdatesVIPGroup: a reload adds an address to a running
// group (the owner takes it at once) and changes its priority; a change
// the election cannot take in place (another interface) is reported and
// leaves the running group as it was, in status too.
func TestEngineReloadUpdatesVIPGroup(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65")
	listen(t, "198.18.1.65:80")
	dir := t.TempDir()
	r := startRig(t, dir, &fakeKernel{Fake: dptest.New()}, backends("198.18.1.65"))
	r.eventually("the standalone node owns the VIP", func() bool { return hasAddr(t, "198.18.1.63") })
	group := func(with string) func(string) string {
		return replaceOnce("name = \"web\"\naddresses = [\"198.18.1.63/32\"]\n", with)
	}

	r.writeEdited(backends("198.18.1.65"), group("name = \"web\"\naddresses = [\"198.18.1.63/32\", \"198.18.1.64/32\"]\npriority = 120\n"))
	if got := r.reloadChanges(); !strings.Contains(got, "vip_group web updated") {
		t.Errorf("reload changes %q do not report the group", got)
	}
	r.eventually("the owner holds the new address", func() bool { return hasAddr(t, "198.18.1.64") })
	if !hasAddr(t, "198.18.1.63") {
		t.Error("the address kept in the group was released")
	}
	if g := groupOf(t, r, "web"); g.BasePriority != 120 || g.State != "master" || len(g.Addresses) != 2 {
		t.Fatalf("status after the update: %+v", g)
	}

	r.writeEdited(backends("198.18.1.65"), group("name = \"web\"\ninterface = \"lo\"\naddresses = [\"198.18.1.63/32\"]\n"))
	if got := r.reloadChanges(); !strings.Contains(got, "interface lvt0 -> lo") || !strings.Contains(got, "restart lvsd to apply it") {
		t.Errorf("reload changes %q do not name the restart-only change", got)
	}
	if !hasAddr(t, "198.18.1.64") {
		t.Error("a refused group change released an address")
	}
	if g := groupOf(t, r, "web"); g.Interface != "lvt0" || g.BasePriority != 120 || len(g.Addresses) != 2 {
		t.Fatalf("status after a refused update: %+v, want the running group", g)
	}
}

// TestEngineReloadKeepsRunningNode: a reload that changes [node] state_dir
// is reported as needing a restart, and lvsd keeps using the running one.
func TestEngineReloadKeepsRunningNode(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65")
	listen(t, "198.18.1.65:80")
	dir := t.TempDir()
	ctx := context.Background()
	r := startRig(t, dir, &fakeKernel{Fake: dptest.New()}, backends("198.18.1.65"))
	r.writeEdited(backends("198.18.1.65"), replaceOnce(dir+"/state", dir+"/elsewhere"))
	if got := r.reloadChanges(); !strings.Contains(got, "[node] changed: restart lvsd") {
		t.Fatalf("reload changes %q, want [node] reported as needing a restart", got)
	}
	if _, err := r.client.Group(ctx, "demote", "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(overridesPath(filepath.Join(dir, "state"))); err != nil {
		t.Errorf("the running state_dir has no overrides file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "elsewhere")); !os.IsNotExist(err) {
		t.Errorf("lvsd used the state_dir of a reload that needs a restart (stat: %v)", err)
	}
}

// TestEngineReloadTrackScriptWeight: a [[track_script]] weight change is
// applied (through the groups that use the script) and reported as such,
// not as needing a restart; a command change is reported as needing one.
func TestEngineReloadTrackScriptWeight(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65")
	listen(t, "198.18.1.65:80")
	dir := t.TempDir()
	r := startRig(t, dir, &fakeKernel{Fake: dptest.New()}, backends("198.18.1.65"))
	write := func(command string, weight int) {
		t.Helper()
		r.writeEdited(backends("198.18.1.65"), replaceOnce("[[vip_group]]\nname = \"web\"\n",
			fmt.Sprintf("[[track_script]]\nname = \"chk\"\ncommand = [%q]\nweight = %d\n\n[[vip_group]]\nname = \"web\"\ntrack_script = [{ name = \"chk\" }]\n", command, weight)))
	}
	// Adding the script is a restart; once running (restart), weights reload.
	write("/bin/true", -10)
	if got := r.reloadChanges(); !strings.Contains(got, "[[track_script]] (scripts added, removed or renamed) changed: restart") {
		t.Fatalf("adding a script: %q", got)
	}
	r.stop()
	r = runRig(t, dir, &fakeKernel{Fake: dptest.New()})

	write("/bin/true", -20)
	got := r.reloadChanges()
	if !strings.Contains(got, "vip_group web updated") || strings.Contains(got, "track_script") {
		t.Errorf("weight change: %q, want the group updated and no restart asked", got)
	}
	write("/bin/false", -20)
	if got := r.reloadChanges(); !strings.Contains(got, "[[track_script]] chk command changed: restart lvsd") {
		t.Errorf("command change: %q, want a restart named", got)
	}
}

// TestEngineReloadReportsOrphanedOverrides: a reload that renames a
// service, or changes a backend's port, cannot carry an operator's drain
// over (overrides are keyed by service name and backend): it says so in
// its changes instead of silently undraining.
func TestEngineReloadReportsOrphanedOverrides(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65", "198.18.1.66")
	listen(t, "198.18.1.65:80")
	listen(t, "198.18.1.66:80")
	dir := t.TempDir()
	ctx := context.Background()
	r := startRig(t, dir, &fakeKernel{Fake: dptest.New()}, backends("198.18.1.65", "198.18.1.66"))
	if _, err := r.client.Backend(ctx, "drain", api.BackendRequest{Service: "web", Backend: "198.18.1.66"}); err != nil {
		t.Fatal(err)
	}
	reload := func(edit func(string) string) string {
		t.Helper()
		r.writeEdited(backends("198.18.1.65", "198.18.1.66"), edit)
		return r.reloadChanges()
	}
	got := reload(func(c string) string { return strings.Replace(c, "name = \"web\"\ngroup", "name = \"web2\"\ngroup", 1) })
	if !strings.Contains(got, "service web removed: operator overrides no longer apply (kept; they return with the service or backend): drained 198.18.1.66:80") {
		t.Errorf("rename: changes %q do not report the drain left behind", got)
	}
	// Back to web: the drain applies again.
	reload(func(c string) string {
		return strings.Replace(c, "port = 80\nscheduler", "port = 80\nscheduler", 1) + "\n"
	})
	r.eventually("the drain is back with the service", func() bool { return r.dests()["198.18.1.66"] == 0 })
	got = reload(func(c string) string { return strings.Replace(c, "port = 80\nscheduler", "port = 8080\nscheduler", 1) })
	if !strings.Contains(got, "service web changed") || !strings.Contains(got, "drained 198.18.1.66:80") {
		t.Errorf("port change: changes %q do not report the drain left behind", got)
	}
}

// writeEdited writes the base config with these backends, changed by edit
// (which must change it).
func (r *rig) writeEdited(backendsBody string, edit func(string) string) {
	r.t.Helper()
	base := fmt.Sprintf(baseConfig, r.dir, backendsBody)
	body := edit(base)
	if body == base {
		r.t.Fatal("test bug: the edit changed nothing")
	}
	if err := os.WriteFile(filepath.Join(r.dir, "lvsd.toml"), []byte(body), 0o600); err != nil {
		r.t.Fatal(err)
	}
}

// reloadChanges reloads and returns the changes reported, one per line; a
// refused reload fails the test.
func (r *rig) reloadChanges() string {
	r.t.Helper()
	res, err := r.client.Reload(context.Background())
	if err != nil || !res.OK {
		r.t.Fatalf("reload: %+v %v", res, err)
	}
	return strings.Join(res.Changes, "\n")
}

// replaceOnce is an edit replacing the first old by new.
func replaceOnce(old, new string) func(string) string {
	return func(c string) string { return strings.Replace(c, old, new, 1) }
}
