package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/dptest"
)

// A reload looks only at services of changed include files: renaming or
// moving a service between files writes nothing, a changed weight writes
// one update, removals delete, and the owned-services file is rewritten
// only when the owned set changed.
func TestReloadOfIncludeFiles(t *testing.T) {
	needNetns(t)
	// svc writes one service on 198.18.2.<n>:80 with two DR backends.
	svc := func(name string, n, weight int) string {
		return fmt.Sprintf("[[service]]\nname = %q\naddress = \"198.18.2.%d\"\nport = 80\nforward = \"dr\"\n"+
			"  [[service.backend]]\n  address = \"198.19.0.1\"\n  weight = %d\n  [[service.backend]]\n  address = \"198.19.0.2\"\n", name, n, weight)
	}
	dir, kern, client := startWithIncludes(t, map[string]string{
		"a.toml": svc("a1", 1, 1) + svc("a2", 2, 1),
		"b.toml": svc("b1", 3, 1) + svc("b2", 4, 1),
		"c.toml": svc("c1", 5, 1),
	})
	ctx := context.Background()
	write := func(file string, svcs ...string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "conf.d", file), []byte(strings.Join(svcs, "")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(kern.Table()); n != 5 {
		t.Fatalf("%d services in the kernel, want 5", n)
	}
	owned := filepath.Join(dir, "state", "owned.json")
	ownedStat := func() os.FileInfo {
		t.Helper()
		fi, err := os.Stat(owned)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	// reload returns the writes and whether owned.json was rewritten.
	reload := func(what string) ([]director.Op, bool) {
		t.Helper()
		before := ownedStat()
		kern.ResetWrites()
		kern.RecordWrites(true)
		res, err := client.Reload(ctx)
		if err != nil || !res.OK {
			t.Fatalf("%s: reload %+v, %v", what, res, err)
		}
		return kern.Writes(), !os.SameFile(before, ownedStat())
	}
	key := func(n int) string { return fmt.Sprintf("tcp:198.18.2.%d:80", n) }

	write("b.toml", svc("b1", 3, 7), svc("b2", 4, 1))
	w, rewrote := reload("one weight")
	if len(w) != 1 || w[0].Kind != director.OpUpdateDest || w[0].Service.Key.String() != key(3) || w[0].Dest.Weight != 7 {
		t.Errorf("one weight changed: writes %s", opKinds(w))
	}
	if rewrote {
		t.Error("one weight changed: owned.json rewritten")
	}

	write("c.toml", svc("c1-renamed", 5, 1), svc("a2", 2, 1))
	write("a.toml", svc("a1", 1, 1))
	if w, rewrote = reload("rename and move"); len(w) != 0 || rewrote {
		t.Errorf("renaming a service and moving one to another file: writes %s, owned.json rewritten %v", opKinds(w), rewrote)
	}
	st, err := client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range st.Services {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, " "); got != "a1 b1 b2 c1-renamed a2" {
		t.Errorf("services after rename and move: %s", got)
	}

	if w, rewrote = reload("nothing"); len(w) != 0 || rewrote {
		t.Errorf("nothing changed: writes %s, owned.json rewritten %v", opKinds(w), rewrote)
	}

	write("b.toml", svc("b1", 3, 7))
	if err := os.Remove(filepath.Join(dir, "conf.d", "c.toml")); err != nil {
		t.Fatal(err)
	}
	w, rewrote = reload("removals")
	var dels []string
	for _, op := range w {
		if op.Kind != director.OpDelService {
			t.Errorf("removals wrote %s", op)
		}
		dels = append(dels, op.Service.Key.String())
	}
	slices.Sort(dels)
	if got, want := strings.Join(dels, " "), key(2)+" "+key(4)+" "+key(5); got != want || !rewrote {
		t.Errorf("removals deleted %q, want %q; owned.json rewritten %v", got, want, rewrote)
	}
	data, err := os.ReadFile(owned)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(data), `[{"family":2,"protocol":6,"address":"198.18.2.1","port":80},{"family":2,"protocol":6,"address":"198.18.2.3","port":80}]`; got != want {
		t.Errorf("owned.json = %s, want %s", got, want)
	}
}

// startWithIncludes runs lvsd on the in-memory kernel with a main config
// that includes conf.d/*.toml, the given files; it returns the config
// directory once the control socket answers.
func startWithIncludes(t *testing.T, files map[string]string) (string, *fakeKernel, *api.Client) {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	main := fmt.Sprintf("include = [\"conf.d/*.toml\"]\n[node]\nname = \"t\"\nstate_dir = %q\n[ipvs]\nresync_interval = \"0s\"\n[control]\nsocket = %q\n",
		filepath.Join(dir, "state"), filepath.Join(dir, "lvsd.sock"))
	if err := os.WriteFile(filepath.Join(dir, "lvsd.toml"), []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, "conf.d", name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	kern := &fakeKernel{Fake: dptest.New()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &syncBuffer{}
	go func() {
		done <- Run(ctx, Options{ConfigPath: filepath.Join(dir, "lvsd.toml"), Log: slog.New(slog.NewTextHandler(logs, nil)),
			OpenKernel: func(context.Context, *slog.Logger) (Kernel, error) { return kern, nil }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	})
	client := api.NewUnixClient(filepath.Join(dir, "lvsd.sock"))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := client.Status(ctx); err == nil {
			return dir, kern, client
		}
		if time.Now().After(deadline) {
			t.Fatal("lvsd did not start")
		}
	}
}

// A service without quorum is always up: starting it logs no quorum
// transition and records no event; a service with a quorum still does.
func TestQuorumOffIsNoEvent(t *testing.T) {
	needNetns(t)
	svc := "[[service]]\nname = %q\naddress = \"198.18.2.%d\"\nport = 80\nquorum = %d\n  [[service.backend]]\n  address = \"198.19.0.1\"\n"
	_, _, client := startWithIncludes(t, map[string]string{
		"a.toml": fmt.Sprintf(svc, "off", 1, 0) + fmt.Sprintf(svc, "on", 2, 1),
	})
	evs, err := client.Events(context.Background(), time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var quorum []string
	for _, ev := range evs {
		if ev.Kind == "quorum" {
			quorum = append(quorum, ev.Subject+" "+ev.From+"->"+ev.To)
		}
	}
	if got := strings.Join(quorum, ", "); got != "on unknown->up" {
		t.Errorf("quorum events %q, want only \"on unknown->up\"", got)
	}
}
