package healthcheck

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// EventKind says what an Event is about.
type EventKind string

const (
	KindHealth EventKind = "health" // a backend went up or down
	KindWeight EventKind = "weight" // a dynamic check changed an up backend's weight
	KindQuorum EventKind = "quorum" // a service gained or lost quorum
)

// Event is one recorded transition.
type Event struct {
	Seq     uint64         `json:"seq"`
	Time    time.Time      `json:"time"`
	Kind    EventKind      `json:"kind"`
	Service string         `json:"service"`
	Backend netip.AddrPort `json:"backend,omitzero"` // zero for service events
	From    State          `json:"from"`
	To      State          `json:"to"`
	Reason  string         `json:"reason"`
	// Successes and Failures are the consecutive counts after the result
	// that caused the transition.
	Successes int `json:"successes"`
	Failures  int `json:"failures"`
	// Weight is the dynamic weight after the event, NoWeight if none; for
	// quorum events, the healthy weight sum.
	Weight int `json:"weight"`
}

// LogAttrs are the structured fields of the event's log line.
func (e Event) LogAttrs() []slog.Attr {
	attrs := []slog.Attr{
		slog.String("kind", string(e.Kind)),
		slog.String("service", e.Service),
	}
	if e.Backend.IsValid() {
		attrs = append(attrs, slog.String("backend", e.Backend.String()))
	}
	attrs = append(attrs,
		slog.String("from", e.From.String()),
		slog.String("to", e.To.String()),
		slog.String("reason", e.Reason),
		slog.Int("successes", e.Successes),
		slog.Int("failures", e.Failures),
	)
	if e.Weight != NoWeight {
		attrs = append(attrs, slog.Int("weight", e.Weight))
	}
	return attrs
}

// DefaultHistory is the number of events a History keeps by default.
const DefaultHistory = 4096

// History is a bounded, concurrency-safe ring of the most recent events.
type History struct {
	mu   sync.Mutex
	ring []Event
	next uint64 // Seq of the next event; the first is 1
}

// NewHistory keeps the last size events (DefaultHistory if size <= 0).
func NewHistory(size int) *History {
	if size <= 0 {
		size = DefaultHistory
	}
	return &History{ring: make([]Event, size), next: 1}
}

// Add records e, stamping its Seq (and Time if zero), and returns it.
func (h *History) Add(e Event) Event {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	h.mu.Lock()
	e.Seq = h.next
	h.next++
	h.ring[e.Seq%uint64(len(h.ring))] = e
	h.mu.Unlock()
	return e
}

// Events returns, oldest first, up to limit events with Seq > since (all of
// them if limit <= 0). If events after since were already overwritten, it
// starts at the oldest kept: the caller sees the gap as first.Seq > since+1.
func (h *History) Events(since uint64, limit int) []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	size := uint64(len(h.ring))
	last := h.next - 1 // newest Seq, 0 if none
	first := uint64(1)
	if last > size {
		first = last - size + 1
	}
	if since+1 > first {
		first = since + 1
	}
	if first > last {
		return nil
	}
	n := last - first + 1
	if limit > 0 && uint64(limit) < n {
		n = uint64(limit)
	}
	out := make([]Event, 0, n)
	for s := first; s < first+n; s++ {
		out = append(out, h.ring[s%size])
	}
	return out
}
