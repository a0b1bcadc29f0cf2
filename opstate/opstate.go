// Package opstate holds operator runtime overrides for backends (drain,
// disable, add, remove). They are cluster state: every record carries a
// version, replicas merge by last-writer-wins per (service, backend), and the
// store persists itself atomically so overrides survive a restart.
package opstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/lvsd/lvsd/internal/atomicfile"
)

// Admin is the administrative state an operator set on a backend.
type Admin string

const (
	// AdminNone follows config and health.
	AdminNone Admin = ""
	// Drained keeps the backend in IPVS with weight 0: established
	// connections continue, new clients go elsewhere.
	Drained Admin = "drained"
	// Disabled removes the backend from IPVS.
	Disabled Admin = "disabled"
)

// Key names one backend of one service.
type Key struct {
	Service string
	Backend netip.AddrPort
}

func (k Key) String() string { return k.Service + "/" + k.Backend.String() }

// Version orders writes to one key: later wall time wins, node name breaks
// ties, so every replica picks the same winner.
type Version struct {
	Wall int64  `json:"wall"`
	Node string `json:"node"`
}

// Less reports whether v is older than o.
func (v Version) Less(o Version) bool {
	if v.Wall != o.Wall {
		return v.Wall < o.Wall
	}
	return v.Node < o.Node
}

// Record is the override of one backend.
type Record struct {
	Service string         `json:"service"`
	Backend netip.AddrPort `json:"backend"`
	Admin   Admin          `json:"admin,omitempty"`
	// Added marks a backend added at run time rather than in the config.
	Added bool `json:"added,omitempty"`
	// Removed hides a backend, whether it came from the config or was added.
	Removed bool `json:"removed,omitempty"`
	// Weight applies to added backends.
	Weight  int     `json:"weight,omitempty"`
	Version Version `json:"version"`
}

// maxSkew is how far in the future a peer's record may be stamped (clock
// skew between directors); later ones are refused.
const maxSkew = time.Hour

// Key returns the record's key.
func (r Record) Key() Key { return Key{r.Service, r.Backend} }

// Store is the replicated set of records. It is safe for concurrent use.
type Store struct {
	mu      sync.Mutex
	node    string
	path    string // empty: not persisted
	now     func() time.Time
	last    int64 // highest wall time seen, so local writes sort after it
	records map[Key]Record
	refused uint64 // peer records refused by Merge, for the daemon to report
	// bySvc indexes records by service: a reload asks for the records of
	// each service it touches, and a scan of every record per service would
	// make a reload of 10,000 services with many records take minutes.
	bySvc map[string]map[netip.AddrPort]struct{}
}

// setLocked stores r and indexes it.
func (s *Store) setLocked(r Record) {
	s.records[r.Key()] = r
	m := s.bySvc[r.Service]
	if m == nil {
		m = map[netip.AddrPort]struct{}{}
		s.bySvc[r.Service] = m
	}
	m[r.Backend] = struct{}{}
}

// deleteLocked drops the record of k.
func (s *Store) deleteLocked(k Key) {
	delete(s.records, k)
	if m := s.bySvc[k.Service]; m != nil {
		delete(m, k.Backend)
		if len(m) == 0 {
			delete(s.bySvc, k.Service)
		}
	}
}

// Option configures a Store.
type Option func(*Store)

// WithClock replaces the wall clock (tests).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// Open loads the store persisted at path (missing file: empty store). An
// empty path keeps the store in memory only.
func Open(node, path string, opts ...Option) (*Store, error) {
	s := &Store{node: node, path: path, now: time.Now, records: map[Key]Record{}, bySvc: map[string]map[netip.AddrPort]struct{}{}}
	for _, o := range opts {
		o(s)
	}
	if path == "" {
		return s, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read runtime state %s: %w", path, err)
	}
	recs, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("runtime state %s: %w (fix it, or move it aside to start without this director's operator overrides; in a cluster the peers send theirs back)", path, err)
	}
	for _, r := range recs {
		s.setLocked(r)
		s.last = max(s.last, r.Version.Wall)
	}
	return s, nil
}

// Get returns the record of k, if any.
func (s *Store) Get(k Key) (Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.records[k]
	return r, ok
}

// Put stamps r with a new local version, stores and persists it, and returns
// the stamped record for replication. On a persistence error nothing changes.
func (s *Store) Put(r Record) (Record, error) {
	if r.Service == "" || !r.Backend.IsValid() {
		return Record{}, fmt.Errorf("runtime record needs a service and a backend address, got %q %v", r.Service, r.Backend)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// After the key's current version only: last-writer-wins is per key,
	// and a record once stamped far ahead (a clock fixed since) must not
	// drag every later local change past what peers accept.
	prev, had := s.records[r.Key()]
	wall := s.now().UnixNano()
	if had {
		wall = max(wall, prev.Version.Wall+1)
	}
	r.Version = Version{Wall: wall, Node: s.node}
	s.setLocked(r)
	if err := s.persistLocked(); err != nil {
		if had {
			s.setLocked(prev)
		} else {
			s.deleteLocked(r.Key())
		}
		return Record{}, err
	}
	s.last = wall
	return r, nil
}

// Merge applies records from a peer, keeping the newer version of each key.
// It returns the keys that changed.
func (s *Store) Merge(recs []Record) ([]Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var changed []Key
	for _, r := range recs {
		if r.Service == "" || !r.Backend.IsValid() || r.Version.Wall > s.now().Add(maxSkew).UnixNano() {
			// A peer's bad record must not poison ours; one stamped far in
			// the future would win every later local change.
			s.refused++
			continue
		}
		k := r.Key()
		if cur, ok := s.records[k]; ok && !cur.Version.Less(r.Version) {
			continue
		}
		s.setLocked(r)
		s.last = max(s.last, r.Version.Wall)
		changed = append(changed, k)
	}
	if len(changed) == 0 {
		return nil, nil
	}
	if err := s.persistLocked(); err != nil {
		return changed, err
	}
	return changed, nil
}

// Refused counts the peer records Merge has refused (malformed, or stamped
// more than maxSkew ahead: that peer's clock is wrong).
func (s *Store) Refused() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// Records returns every record, sorted by key.
func (s *Store) Records() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sortedLocked()
}

// Digest summarises every key and version; equal digests mean equal stores.
func (s *Store) Digest() uint64 {
	h := fnv.New64a()
	for _, r := range s.Records() {
		fmt.Fprintf(h, "%s|%s|%d|%s\n", r.Service, r.Backend, r.Version.Wall, r.Version.Node)
	}
	return h.Sum64()
}

func (s *Store) sortedLocked() []Record {
	out := make([]Record, 0, len(s.records))
	for _, r := range s.records {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Backend.String() < out[j].Backend.String()
	})
	return out
}

func (s *Store) persistLocked() error {
	if s.path == "" {
		return nil
	}
	data, err := Encode(s.sortedLocked())
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.path, data, 0o600); err != nil {
		return fmt.Errorf("persist runtime state: %w", err)
	}
	return nil
}

type fileFormat struct {
	Version int      `json:"format"`
	Records []Record `json:"records"`
}

// Encode serialises records for the state file and for replication.
func Encode(recs []Record) ([]byte, error) {
	if recs == nil {
		recs = []Record{}
	}
	data, err := json.Marshal(fileFormat{Version: 1, Records: recs})
	if err != nil {
		return nil, fmt.Errorf("encode runtime state: %w", err)
	}
	return data, nil
}

// Decode parses what Encode produced.
func Decode(data []byte) ([]Record, error) {
	var f fileFormat
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decode runtime state: %w", err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("decode runtime state: unsupported format %d", f.Version)
	}
	for i, r := range f.Records {
		if r.Service == "" || !r.Backend.IsValid() {
			return nil, fmt.Errorf("decode runtime state: record %d has no service or backend", i)
		}
		switch r.Admin {
		case AdminNone, Drained, Disabled:
		default:
			return nil, fmt.Errorf("decode runtime state: record %d (%s): unknown admin state %q", i, r.Key(), r.Admin)
		}
	}
	return f.Records, nil
}

// ForService returns the records of one service, sorted by backend (as
// Records orders them), in time proportional to that service's records.
func (s *Store) ForService(service string) []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.bySvc[service]
	if len(m) == 0 {
		return nil
	}
	out := make([]Record, 0, len(m))
	for b := range m {
		out = append(out, s.records[Key{service, b}])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Backend.String() < out[j].Backend.String() })
	return out
}
