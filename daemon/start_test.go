package daemon

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/dptest"
)

// TestStartSurvivesAFailedWrite: a service the kernel refuses at start
// does not stop lvsd (nor keep its VIPs down): it runs, says so in the log
// and the event history, and the service is written once the kernel
// accepts it (at the next resync or change; resync is off here).
func TestStartSurvivesAFailedWrite(t *testing.T) {
	needNetns(t)
	setupLink(t, "198.18.1.65")
	listen(t, "198.18.1.65:80")
	kern := &fakeKernel{Fake: dptest.New()}
	kern.SetFault(func(op director.Op) error {
		if op.Kind == director.OpAddService {
			return syscall.ENOENT
		}
		return nil
	})
	dir := t.TempDir()
	ctx := context.Background()
	r := startRig(t, dir, kern, backends("198.18.1.65"))
	r.eventually("the VIP is up despite the failed write", func() bool { return hasAddr(t, "198.18.1.63") })
	evs, err := r.client.Events(ctx, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !containsEvent(evs, "ipvs", "start", "partial") {
		t.Errorf("no ipvs/start/partial event in %+v", evs)
	}
	if !strings.Contains(r.logs.String(), "some writes failed") {
		t.Errorf("the failed write is not logged:\n%s", r.logs)
	}
	kern.SetFault(nil)
	if _, err := r.client.Backend(ctx, "drain", api.BackendRequest{Service: "web", Backend: "198.18.1.65"}); err != nil {
		t.Fatal(err)
	}
	r.eventually("the service is written with the next change", func() bool { w, ok := r.dests()["198.18.1.65"]; return ok && w == 0 })
}

// TestLogOnce: a failure logged once at its level, then at debug while it
// repeats, again when it changes, and one info line when it clears.
func TestLogOnce(t *testing.T) {
	var buf syncBuffer
	e := &engine{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	refused := errors.New("no such file or directory")
	for range 3 {
		e.logOnce(slog.LevelError, "sync service web", "sync service", refused, "service", "web")
	}
	e.logOnce(slog.LevelError, "sync service web", "sync service", errors.New("invalid argument"), "service", "web")
	e.logOnce(slog.LevelError, "sync service web", "sync service", nil, "service", "web")
	e.logOnce(slog.LevelError, "sync service web", "sync service", nil, "service", "web")
	got := buf.String()
	if n := strings.Count(got, "no such file"); n != 1 {
		t.Errorf("a repeated error logged %d times, want once:\n%s", n, got)
	}
	if n := strings.Count(got, "level=ERROR"); n != 2 {
		t.Errorf("%d error lines, want 2 (the first error, the changed one):\n%s", n, got)
	}
	if n := strings.Count(got, "succeeded again"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, got)
	}
}
