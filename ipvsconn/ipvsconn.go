// Package ipvsconn reads the kernel's IPVS connection table
// (/proc/net/ip_vs_conn of the caller's network namespace): connection
// entries and the persistence templates that keep a client on its real
// server. IPVS has no netlink dump of connections, so procfs it is.
package ipvsconn

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultPath is the connection table of the caller's network namespace.
const DefaultPath = "/proc/net/ip_vs_conn"

// Conn is one entry of the connection table.
type Conn struct {
	Protocol string         // TCP, UDP, SCTP; "IP" for a fwmark service's persistence templates
	Client   netip.AddrPort // port 0 in templates
	Virtual  netip.AddrPort // a fwmark service's templates carry the mark as 0.0.0.MARK
	Dest     netip.AddrPort
	State    string // as the kernel names it (ESTABLISHED, FIN_WAIT, ASSURED for templates, ...)
	Expires  time.Duration
	PEName   string // persistence engine, e.g. "sip"
	PEData   string
}

// Template reports whether the entry is a persistence template: the record
// that sends every new connection of the client to Dest until it expires.
// The kernel does not print its template flag; templates are the entries
// without a client port (protocol "IP" for fwmark services). Linux 6.1
// shows a TCP template's state as ASSURED.
func (c Conn) Template() bool { return c.Protocol == "IP" || c.Client.Port() == 0 }

// Read parses the table at path, keeping the entries keep accepts (nil:
// all). Filtering while reading keeps memory flat on tables with millions of
// connections.
func Read(path string, keep func(Conn) bool) ([]Conn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read IPVS connection table: %w", err)
	}
	defer f.Close()
	return Parse(f, keep)
}

// Parse reads the table's text.
func Parse(r io.Reader, keep func(Conn) bool) ([]Conn, error) {
	sc := bufio.NewScanner(r)
	var out []Conn
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 && strings.HasPrefix(text, "Pro ") {
			continue // header
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		c, err := parseLine(text)
		if err != nil {
			return out, fmt.Errorf("IPVS connection table line %d: %w", line, err)
		}
		if keep == nil || keep(c) {
			out = append(out, c)
		}
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read IPVS connection table: %w", err)
	}
	return out, nil
}

// parseLine reads "Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires
// [PEName PEData]": IPv4 addresses as 8 hex digits, IPv6 ones in colon form,
// ports as 4 hex digits.
func parseLine(s string) (Conn, error) {
	f := strings.Fields(s)
	if len(f) < 9 {
		return Conn{}, fmt.Errorf("want at least 9 fields, got %d: %q", len(f), s)
	}
	var c Conn
	c.Protocol = f[0]
	var err error
	if c.Client, err = addrPort(f[1], f[2]); err != nil {
		return Conn{}, fmt.Errorf("client: %w", err)
	}
	if c.Virtual, err = addrPort(f[3], f[4]); err != nil {
		return Conn{}, fmt.Errorf("virtual: %w", err)
	}
	if c.Dest, err = addrPort(f[5], f[6]); err != nil {
		return Conn{}, fmt.Errorf("destination: %w", err)
	}
	c.State = f[7]
	secs, err := strconv.ParseUint(f[8], 10, 32)
	if err != nil {
		return Conn{}, fmt.Errorf("expires %q: %w", f[8], err)
	}
	c.Expires = time.Duration(secs) * time.Second
	if len(f) > 9 {
		c.PEName = f[9]
	}
	if len(f) > 10 {
		c.PEData = f[10]
	}
	return c, nil
}

func addrPort(a, p string) (netip.AddrPort, error) {
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", p, err)
	}
	var addr netip.Addr
	if strings.Contains(a, ":") {
		addr, err = netip.ParseAddr(strings.Trim(a, "[]"))
		if err != nil {
			return netip.AddrPort{}, err
		}
	} else {
		v, err := strconv.ParseUint(a, 16, 32)
		if err != nil || len(a) != 8 {
			return netip.AddrPort{}, fmt.Errorf("address %q is not 8 hex digits", a)
		}
		addr = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}
