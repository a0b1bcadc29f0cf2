package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director/dptest"
)

// TestTrackedServiceDownAtStart: a VIP group tracking a service whose
// quorum is down when lvsd starts (alpha: backends down until their first
// success; here the only backend is dead) starts in fault and never holds
// the VIP, instead of counting the service up until its first change.
func TestTrackedServiceDownAtStart(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65") // nothing listens on .65:80
	dir := t.TempDir()
	ctx := context.Background()
	cfg := strings.ReplaceAll(`
[node]
name = "dir-t"
interface = "lvt0"
state_dir = "DIR/state"
[control]
socket = "DIR/lvsd.sock"
[ipvs]
resync_interval = "0s"
[[vip_group]]
name = "web"
addresses = ["198.18.1.63/32"]
track_service = [{ name = "web" }]
[[service]]
name = "web"
group = "web"
address = "198.18.1.63"
port = 80
quorum = 1
alpha = true
  [service.check]
  type = "tcp"
  interval = "1s"
  timeout = "500ms"
  initial_delay = "10ms"
  [[service.backend]]
  address = "198.18.1.65"
`, "DIR", dir)
	if err := os.WriteFile(filepath.Join(dir, "lvsd.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runRig(t, dir, &fakeKernel{Fake: dptest.New()})
	r.eventually("the group in fault", func() bool { return groupOf(t, r, "web").State == "fault" })
	evs, err := r.client.Events(ctx, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.Kind == "election" && ev.To == "master" {
			t.Fatalf("the group was master before its tracked service's quorum counted: %+v", ev)
		}
	}
	if hasAddr(t, "198.18.1.63") {
		t.Fatal("the VIP is up while the tracked service has no quorum")
	}
}
