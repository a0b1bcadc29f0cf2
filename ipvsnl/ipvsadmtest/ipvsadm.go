// Package ipvsadmtest parses the listings of ipvsadm(8), so lab tests can
// check what lvsd programmed against an independent witness: the same table
// as the operator sees it with `ipvsadm -Ln`.
package ipvsadmtest

import (
	"fmt"
	"strconv"
	"strings"
)

// Service is one service block of `ipvsadm -Ln` (plain, --stats or
// --persistent-conn listing).
type Service struct {
	// Proto is TCP, UDP, SCTP or FWM.
	Proto string
	// Addr is "198.18.1.100:0", "[2001:db8::1]:80", or the mark for FWM.
	Addr string
	// IPv6 is set for an FWM service of family IPv6 (shown as "FWM 8 IPv6").
	IPv6 bool
	// Plain listing only.
	Scheduler  string
	Persistent bool
	Timeout    int    // persistence timeout, seconds
	Mask       string // "255.255.255.0" or "64"; empty when /32 or /128
	PE         string
	OnePacket  bool
	// Extra holds tokens of the service line not understood above.
	Extra []string
	// Numbers holds the service line's numeric columns in --stats and
	// --rate listings (Conns InPkts OutPkts InBytes OutBytes).
	Numbers []uint64
	Dests   []Dest
}

// Dest is one "->" line.
type Dest struct {
	Addr string
	// Forward is Masq, Local, Tunnel or Route (plain listing).
	Forward string
	// Numbers are the remaining numeric columns: Weight ActiveConn InActConn
	// in the plain listing; Weight PersistConn ActiveConn InActConn with
	// --persistent-conn; the counters with --stats.
	Numbers []uint64
}

// Key is "PROTO ADDR" ("TCP 198.18.1.100:0", "FWM 8", "FWM 8 IPv6").
func (s Service) Key() string {
	k := s.Proto + " " + s.Addr
	if s.IPv6 {
		k += " IPv6"
	}
	return k
}

// Parse reads an `ipvsadm -L -n` listing. It needs the numeric form (-n).
func Parse(out string) ([]Service, error) {
	var svcs []Service
	for n, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0, strings.HasPrefix(line, "IP Virtual Server"), f[0] == "Prot", f[0] == "->" && len(f) > 1 && f[1] == "RemoteAddress:Port":
			continue
		case f[0] == "->":
			if len(svcs) == 0 {
				return nil, fmt.Errorf("line %d: destination before any service: %q", n+1, line)
			}
			d, err := parseDest(f[1:])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w: %q", n+1, err, line)
			}
			s := &svcs[len(svcs)-1]
			s.Dests = append(s.Dests, d)
		default:
			s, err := parseService(f)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w: %q", n+1, err, line)
			}
			svcs = append(svcs, s)
		}
	}
	return svcs, nil
}

func parseService(f []string) (Service, error) {
	if len(f) < 2 {
		return Service{}, fmt.Errorf("short service line")
	}
	s := Service{Proto: f[0], Addr: f[1]}
	switch s.Proto {
	case "TCP", "UDP", "SCTP", "FWM":
	default:
		return s, fmt.Errorf("unknown protocol %q", s.Proto)
	}
	rest := f[2:]
	if s.Proto == "FWM" && len(rest) > 0 && rest[0] == "IPv6" {
		s.IPv6, rest = true, rest[1:]
	}
	if len(rest) == 0 {
		return s, nil
	}
	if nums, ok := allNumbers(rest); ok {
		s.Numbers = nums
		return s, nil
	}
	s.Scheduler, rest = rest[0], rest[1:]
	for i := 0; i < len(rest); i++ {
		switch tok := rest[i]; {
		case tok == "persistent" && i+1 < len(rest):
			t, err := strconv.Atoi(rest[i+1])
			if err != nil {
				return s, fmt.Errorf("persistent timeout %q", rest[i+1])
			}
			s.Persistent, s.Timeout = true, t
			i++
		case tok == "mask" && i+1 < len(rest):
			s.Mask = rest[i+1]
			i++
		case tok == "pe" && i+1 < len(rest):
			s.PE = rest[i+1]
			i++
		case tok == "ops":
			s.OnePacket = true
		default:
			s.Extra = append(s.Extra, tok)
		}
	}
	return s, nil
}

func parseDest(f []string) (Dest, error) {
	if len(f) < 2 {
		return Dest{}, fmt.Errorf("short destination line")
	}
	d := Dest{Addr: f[0]}
	rest := f[1:]
	switch rest[0] {
	case "Masq", "Local", "Tunnel", "Route":
		d.Forward, rest = rest[0], rest[1:]
	}
	nums, ok := allNumbers(rest)
	if !ok {
		return d, fmt.Errorf("non-numeric destination columns %q", rest)
	}
	d.Numbers = nums
	return d, nil
}

// allNumbers parses columns of plain integers (use ipvsadm --exact for
// counters, or it prints 1K, 2M).
func allNumbers(f []string) ([]uint64, bool) {
	out := make([]uint64, len(f))
	for i, s := range f {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

// Daemon is one line of `ipvsadm -L --daemon`, e.g. "master sync daemon
// (mcast=eth0, syncid=1, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)".
type Daemon struct {
	Role   string // master or backup
	Fields map[string]string
}

// ParseDaemons reads an `ipvsadm -L --daemon` listing.
func ParseDaemons(out string) ([]Daemon, error) {
	var ds []Daemon
	for n, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		role, rest, ok := strings.Cut(line, " sync daemon ")
		if !ok || (role != "master" && role != "backup") {
			return nil, fmt.Errorf("line %d: not a sync daemon line: %q", n+1, line)
		}
		rest = strings.TrimSuffix(strings.TrimPrefix(rest, "("), ")")
		d := Daemon{Role: role, Fields: map[string]string{}}
		for _, kv := range strings.Split(rest, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok {
				return nil, fmt.Errorf("line %d: field %q without '='", n+1, kv)
			}
			d.Fields[k] = v
		}
		ds = append(ds, d)
	}
	return ds, nil
}
