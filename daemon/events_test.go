package daemon

import (
	"slices"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
)

// An event recorded after another but stamped earlier (an election
// transition reported while the operator action that caused it is being
// logged) is listed in time order; the limit keeps the newest.
func TestEventLogTimeOrder(t *testing.T) {
	l := newEventLog(4)
	t0 := time.Now()
	l.add(api.Event{Time: t0, Kind: "quorum"})
	l.add(api.Event{Time: t0.Add(3 * time.Millisecond), Kind: "operator"})
	l.add(api.Event{Time: t0.Add(time.Millisecond), Kind: "election"})
	l.add(api.Event{Time: t0.Add(5 * time.Millisecond), Kind: "reload"})
	l.add(api.Event{Time: t0.Add(4 * time.Millisecond), Kind: "health"}) // overwrites the oldest
	var kinds []string
	for _, e := range l.since(time.Time{}, 3) {
		kinds = append(kinds, e.Kind)
	}
	if got, want := kinds, []string{"operator", "health", "reload"}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}
