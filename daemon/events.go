package daemon

import (
	"slices"
	"sync"
	"time"

	"github.com/lvsd/lvsd/api"
)

// eventLog keeps the most recent transitions of every kind (health, election,
// operator, reload) for lvsctl events.
type eventLog struct {
	mu   sync.Mutex
	ring []api.Event
	next int
	full bool
}

func newEventLog(size int) *eventLog { return &eventLog{ring: make([]api.Event, size)} }

func (l *eventLog) add(e api.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring[l.next] = e
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
}

// since returns, oldest first, the last limit events newer than since.
func (l *eventLog) since(since time.Time, limit int) []api.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var all []api.Event
	if l.full {
		all = append(all, l.ring[l.next:]...)
	}
	all = append(all, l.ring[:l.next]...)
	out := []api.Event{}
	for _, e := range all {
		if e.Time.After(since) {
			out = append(out, e)
		}
	}
	// Events carry the time they happened, which can precede the time they
	// were recorded (an election transition reported while an operator
	// action is being logged): list them in time order.
	slices.SortStableFunc(out, func(a, b api.Event) int { return a.Time.Compare(b.Time) })
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out
}
