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
	m    map[K][]*Service
	dups map[K]struct{}
}

func (x *dupIndex[K]) add(k K, s *Service) {
	if x.m == nil {
		x.m, x.dups = make(map[K][]*Service), make(map[K]struct{})
	}
	l := append(x.m[k], s)
	x.m[k] = l
	if len(l) > 1 {
		x.dups[k] = struct{}{}
	}
}

func (x *dupIndex[K]) remove(k K, s *Service) {
	l := x.m[k]
	i := slices.Index(l, s)
	if i < 0 {
		return
	}
	l = slices.Delete(l, i, i+1)
	switch len(l) {
	case 0:
		delete(x.m, k)
	case 1:
		delete(x.dups, k)
		x.m[k] = l
	default:
		x.m[k] = l
	}
}

func (x *dupIndex[K]) has(k K) bool { return len(x.m[k]) > 0 }

// clashes calls fn for every key held by more than one service, with the
// services in load order: the first keeps the key, the others are at fault.
func (x *dupIndex[K]) clashes(order func(a, b *Service) int, fn func(k K, first, other *Service)) {
	for k := range x.dups {
		l := slices.Clone(x.m[k])
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
