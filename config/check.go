package config

import (
	"encoding/hex"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Check defaults.
const (
	DefaultCheckInterval = time.Second
	DefaultCheckRise     = 2
	DefaultCheckFall     = 3
)

var checkTypes = []CheckType{CheckNone, CheckTCP, CheckHTTP, CheckHTTPS, CheckExec, CheckDNS, CheckGRPC}

// checkKeys says which keys (beyond the common timing ones) each check type
// uses; any other key is a mistake worth reporting.
var checkKeys = map[CheckType][]string{
	CheckNone:  {},
	CheckTCP:   {"source", "port"},
	CheckHTTP:  {"source", "port", "method", "path", "host", "headers", "status", "body_regex", "body_sha256"},
	CheckHTTPS: {"source", "port", "method", "path", "host", "headers", "status", "body_regex", "body_sha256", "sni", "tls_verify", "ca_file"},
	CheckExec:  {"port", "command", "dynamic"},
	CheckDNS:   {"source", "port", "query_name", "query_type", "rcode", "answer"},
	CheckGRPC:  {"source", "port", "grpc_service", "tls", "sni", "tls_verify", "ca_file"},
}

var commonCheckKeys = []string{"type", "interval", "timeout", "rise", "fall", "retry_delay", "initial_delay"}

func (c *Check) needsPort() bool {
	switch c.Type {
	case CheckTCP, CheckHTTP, CheckHTTPS, CheckDNS:
		return true
	}
	return false
}

// check decodes a check table; a missing table means no health check. own
// is the table whose keys must suit the type: a backend override that
// changes the type drops inherited keys the new type does not use.
func (d *decoder) check(r *reader, own *table) *Check {
	c := &Check{Type: CheckNone, Pos: r.tablePos()}
	if r.t == nil {
		c.Interval, c.Timeout = DefaultCheckInterval, DefaultCheckInterval/2
		c.Rise, c.Fall = DefaultCheckRise, DefaultCheckFall
		return c
	}
	typeOK := false
	if v, ok := r.str("type"); ok {
		if slices.Contains(checkTypes, CheckType(v)) {
			c.Type, typeOK = CheckType(v), true
		} else {
			d.e.at(r.pos("type"), "%s: unknown check type %q (tcp, http, https, exec, dns, grpc or none)", r.name("type"), v)
		}
	} else if !r.has("type") {
		d.e.at(c.Pos, "%s is required (tcp, http, https, exec, dns, grpc or none)", r.name("type"))
	}
	c.Interval, c.Timeout = d.intervalTimeout(r, DefaultCheckInterval)
	c.Rise = int(r.intOr("rise", 1, 1000, DefaultCheckRise))
	c.Fall = int(r.intOr("fall", 1, 1000, DefaultCheckFall))
	c.RetryDelay = r.durationOr("retry_delay", 0)
	c.InitialDelay = r.durationOr("initial_delay", c.Interval)

	if v, ok := r.str("source"); ok && v != "" {
		if a, err := netip.ParseAddr(v); err == nil && !a.IsUnspecified() {
			c.Source = a.Unmap()
		} else {
			d.e.at(r.pos("source"), "%s: %q is not an IP address", r.name("source"), v)
		}
	}
	c.Port = uint16(r.intOr("port", 0, 65535, 0))

	c.Method = "GET"
	if v, ok := r.str("method"); ok {
		if v == "" || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			d.e.at(r.pos("method"), "%s: %q is not an HTTP method", r.name("method"), v)
		} else {
			c.Method = v
		}
	}
	c.Path = "/"
	if v, ok := r.str("path"); ok {
		if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, " \t\r\n") {
			d.e.at(r.pos("path"), "%s: %q must start with / and contain no spaces", r.name("path"), v)
		} else {
			c.Path = v
		}
	}
	c.Host, _ = r.str("host")
	if hr := r.sub("headers"); hr.t != nil {
		c.Headers = make(map[string]string, len(hr.t.keys))
		for _, k := range hr.t.keys {
			if v, ok := hr.str(k); ok {
				if !validHeaderName(k) {
					d.e.at(hr.pos(k), "%s: %q is not a valid header name", hr.name(k), k)
				}
				c.Headers[k] = v
			}
		}
	}
	c.Status = []StatusRange{{200, 299}}
	if vals, ok := r.elems("status"); ok {
		c.Status = d.statusRanges(r, vals)
	}
	if v, ok := r.str("body_regex"); ok && v != "" {
		re, err := regexp.Compile(v)
		if err != nil {
			d.e.at(r.pos("body_regex"), "%s: bad regular expression: %v", r.name("body_regex"), err)
		}
		c.BodyRegex = re
	}
	if v, ok := r.str("body_sha256"); ok && v != "" {
		sum, err := hex.DecodeString(v)
		if err != nil || len(sum) != 32 {
			d.e.at(r.pos("body_sha256"), "%s: want 64 hex digits (a SHA-256 digest), got %q", r.name("body_sha256"), v)
		} else {
			c.BodySHA256 = sum
		}
	}
	c.SNI, _ = r.str("sni")
	c.TLSVerify = r.boolean("tls_verify", true)
	if v, ok := r.str("ca_file"); ok && v != "" {
		c.CAFile = d.resolve(v)
		d.f.fileRefs = append(d.f.fileRefs, fileRef{path: c.CAFile, pos: r.pos("ca_file"), key: r.name("ca_file")})
	}
	c.Command = d.command(r, "command", c.Type == CheckExec)
	c.Dynamic = r.boolean("dynamic", false)

	if v, ok := r.str("query_name"); ok {
		if _, isDomain := dns.IsDomainName(v); !isDomain || v == "" {
			d.e.at(r.pos("query_name"), "%s: %q is not a domain name", r.name("query_name"), v)
		}
		c.QueryName = dns.Fqdn(v)
	} else if c.Type == CheckDNS && !r.has("query_name") {
		d.e.at(c.Pos, "%s is required for dns checks", r.name("query_name"))
	}
	c.QueryType = dns.TypeA
	if v, ok := r.str("query_type"); ok {
		if t, known := dns.StringToType[strings.ToUpper(v)]; known && t != dns.TypeNone {
			c.QueryType = t
		} else {
			d.e.at(r.pos("query_type"), "%s: unknown DNS type %q (e.g. A, AAAA, SRV, TXT)", r.name("query_type"), v)
		}
	}
	if v, ok := r.str("rcode"); ok {
		if rc, known := dns.StringToRcode[strings.ToUpper(v)]; known {
			c.RCode = rc
		} else {
			d.e.at(r.pos("rcode"), "%s: unknown rcode %q (e.g. NOERROR, NXDOMAIN, SERVFAIL)", r.name("rcode"), v)
		}
	}
	c.Answer, _ = r.str("answer")
	c.GRPCService, _ = r.str("grpc_service")
	c.TLS = r.boolean("tls", false)

	if typeOK {
		allowed := checkKeys[c.Type]
		for _, k := range r.t.keys {
			mine := own == nil || own.get(k) == r.t.get(k)
			if mine && !slices.Contains(commonCheckKeys, k) && !slices.Contains(allowed, k) && slices.Contains(r.known(), k) {
				d.e.at(r.pos(k), "%s is not used by %s checks", r.name(k), c.Type)
			}
		}
	}
	// Remember where every key is, so checks the health checker makes later
	// (CA files, commands) still point at the right line.
	c.at = make(positions, 0, len(r.t.keys))
	for _, k := range r.t.keys {
		c.at = append(c.at, keyPos{k, r.pos(k)})
	}
	r.done()
	return c
}

// statusRanges reads HTTP statuses: 200, "200" or "200-299".
func (d *decoder) statusRanges(r *reader, vals []*value) []StatusRange {
	var out []StatusRange
	for i, v := range vals {
		p := d.src.pos(v.off)
		var lo, hi int
		switch v.kind {
		case kInt:
			lo, hi = int(v.num), int(v.num)
		case kString:
			a, b, isRange := strings.Cut(v.str, "-")
			var err1, err2 error
			lo, err1 = strconv.Atoi(strings.TrimSpace(a))
			hi = lo
			if isRange {
				hi, err2 = strconv.Atoi(strings.TrimSpace(b))
			}
			if err1 != nil || err2 != nil {
				d.e.at(p, "%s[%d]: %q is not a status or a range like \"200-299\"", r.name("status"), i, v.str)
				continue
			}
		default:
			d.e.at(p, "%s[%d]: want a status code or a range string, got %s", r.name("status"), i, v.kind)
			continue
		}
		if lo < 100 || hi > 599 || lo > hi {
			d.e.at(p, "%s[%d]: status range %d-%d must lie within 100-599, low to high", r.name("status"), i, lo, hi)
			continue
		}
		out = append(out, StatusRange{lo, hi})
	}
	if len(out) == 0 && len(vals) == 0 {
		d.e.at(r.pos("status"), "%s: must not be empty", r.name("status"))
	}
	return out
}

func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for _, c := range k {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", c) {
			return false
		}
	}
	return true
}
