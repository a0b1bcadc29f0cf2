package config

import (
	"net/netip"
	"slices"
)

// serviceIndex finds services that clash across files: the same name, the
// same virtual service, or marks on the same traffic. A Loader keeps it
// between loads and updates it per file, so a reload that changed one file
// re-indexes that file's services instead of all 10,000.
type serviceIndex struct {
	frags map[*fragment]bool
	names dupIndex[string]
	keys  dupIndex[compactKey]
	marks dupIndex[markKey]
}

type markKey struct {
	proto Protocol
	dst   netip.Prefix
	port  uint16 // 0: every port
}

// update makes the index hold exactly the services of frags.
func (x *serviceIndex) update(frags []*fragment) {
	cur := make(map[*fragment]bool, len(frags))
	for _, f := range frags {
		cur[f] = true
	}
	for f := range x.frags {
		if !cur[f] {
			for _, s := range f.services {
				x.each(s, (*dupIndex[string]).remove, (*dupIndex[compactKey]).remove, (*dupIndex[markKey]).remove)
			}
		}
	}
	if x.names.m == nil {
		// The first load: size the maps once instead of growing them.
		n := 0
		for _, f := range frags {
			n += len(f.services)
		}
		x.names.init(n)
		x.keys.init(n)
		x.marks.init(0)
	}
	for _, f := range frags {
		if !x.frags[f] {
			for _, s := range f.services {
				x.each(s, (*dupIndex[string]).add, (*dupIndex[compactKey]).add, (*dupIndex[markKey]).add)
			}
		}
	}
	x.frags = cur
}

// each applies the given operation to every index entry of s.
func (x *serviceIndex) each(s *Service,
	onName func(*dupIndex[string], string, *Service),
	onKey func(*dupIndex[compactKey], compactKey, *Service),
	onMark func(*dupIndex[markKey], markKey, *Service)) {
	onName(&x.names, s.Name, s)
	if s.Family == "" || (s.FWMark == 0 && !s.Address.IsValid()) {
		return // identity already reported as broken
	}
	onKey(&x.keys, compact(s.Key()), s)
	if s.Mark != nil && s.Mark.Destination.IsValid() {
		if len(s.Mark.Ports) == 0 {
			onMark(&x.marks, markKey{s.Mark.Protocol, s.Mark.Destination, 0}, s)
		}
		for _, p := range s.Mark.Ports {
			onMark(&x.marks, markKey{s.Mark.Protocol, s.Mark.Destination, p}, s)
		}
	}
}

// dupIndex maps keys to the services holding them and tracks the keys
// held by more than one.
type dupIndex[K comparable] struct {
	m    map[K]*Service   // a holder of each key
	dups map[K][]*Service // every holder of the keys held more than once
}

func (x *dupIndex[K]) init(n int) {
	x.m, x.dups = make(map[K]*Service, n), make(map[K][]*Service)
}

func (x *dupIndex[K]) add(k K, s *Service) {
	if x.m == nil {
		x.init(0)
	}
	first, held := x.m[k]
	switch {
	case !held:
		x.m[k] = s
	case x.dups[k] == nil:
		x.dups[k] = []*Service{first, s}
	default:
		x.dups[k] = append(x.dups[k], s)
	}
}

func (x *dupIndex[K]) remove(k K, s *Service) {
	l, dup := x.dups[k]
	if !dup {
		if x.m[k] == s {
			delete(x.m, k)
		}
		return
	}
	i := slices.Index(l, s)
	if i < 0 {
		return
	}
	l = slices.Delete(l, i, i+1)
	x.m[k] = l[0]
	if len(l) == 1 {
		delete(x.dups, k)
	} else {
		x.dups[k] = l
	}
}

func (x *dupIndex[K]) has(k K) bool {
	_, ok := x.m[k]
	return ok
}

// clashes calls fn for every key held by more than one service, with the
// services in load order: the first keeps the key, the others are at fault.
func (x *dupIndex[K]) clashes(order func(a, b *Service) int, fn func(k K, first, other *Service)) {
	for k, l := range x.dups {
		l := slices.Clone(l)
		slices.SortFunc(l, order)
		for _, s := range l[1:] {
			fn(k, l[0], s)
		}
	}
}

// compactKey is a VirtualKey without pointers or strings: cheap to hash.
type compactKey struct {
	addr  [16]byte
	port  uint16
	proto uint8
	v6    bool
	mark  uint32
}

func compact(k VirtualKey) compactKey {
	return compactKey{addr: k.Address.As16(), port: k.Port, proto: protoNum(k.Protocol), v6: k.Family == IPv6, mark: k.FWMark}
}

func protoNum(p Protocol) uint8 {
	switch p {
	case TCP:
		return 6
	case UDP:
		return 17
	case SCTP:
		return 132
	}
	return 0
}
