package healthcheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// dnsChecker asks the backend one question over UDP (TCP when truncated)
// and expects an rcode and, optionally, an answer whose data equals Answer.
type dnsChecker struct {
	base
	name   string
	qtype  uint16
	rcode  int
	answer string
	udp    *dns.Client
	tcp    *dns.Client
}

func newDNS(s Spec) (*dnsChecker, error) {
	var errs []error
	name := dns.Fqdn(s.QueryName)
	if s.QueryName == "" {
		errs = append(errs, fieldErr("query_name", "dns check needs a query_name"))
	} else if _, ok := dns.IsDomainName(name); !ok {
		errs = append(errs, fieldErr("query_name", "%q is not a domain name", s.QueryName))
	}
	qtype, ok := dns.StringToType[strings.ToUpper(s.QueryType)]
	if !ok {
		errs = append(errs, fieldErr("query_type", "unknown record type %q", s.QueryType))
	}
	rcode, ok := dns.StringToRcode[strings.ToUpper(s.Rcode)]
	if !ok {
		errs = append(errs, fieldErr("rcode", "unknown rcode %q (e.g. NOERROR, NXDOMAIN, SERVFAIL)", s.Rcode))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c := &dnsChecker{base: newBase(s), name: name, qtype: qtype, rcode: rcode, answer: strings.TrimSpace(s.Answer)}
	udpDialer := &net.Dialer{Timeout: s.Timeout}
	tcpDialer := c.dialer()
	if s.Source.IsValid() {
		udpDialer.LocalAddr = &net.UDPAddr{IP: s.Source.AsSlice()}
	}
	c.udp = &dns.Client{Net: "udp", Timeout: s.Timeout, Dialer: udpDialer}
	c.tcp = &dns.Client{Net: "tcp", Timeout: s.Timeout, Dialer: tcpDialer}
	return c, nil
}

func (c *dnsChecker) Check(ctx context.Context, t Target) Result {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.result(start, c.do(ctx, t))
}

func (c *dnsChecker) do(ctx context.Context, t Target) error {
	m := new(dns.Msg)
	m.SetQuestion(c.name, c.qtype)
	m.RecursionDesired = false
	r, _, err := c.udp.ExchangeContext(ctx, m, t.String())
	if err == nil && r.Truncated {
		r, _, err = c.tcp.ExchangeContext(ctx, m, t.String())
	}
	if err != nil {
		return err
	}
	if r.Rcode != c.rcode {
		return failf("dns rcode %s", dns.RcodeToString[r.Rcode])
	}
	if c.answer == "" {
		return nil
	}
	for _, rr := range r.Answer {
		if answerMatches(rr, c.answer) {
			return nil
		}
	}
	return failf("dns answer %q not found", c.answer)
}

// answerMatches compares want with the record's data as dig prints it;
// addresses compare as addresses and names ignore case and the final dot.
func answerMatches(rr dns.RR, want string) bool {
	data := strings.TrimSpace(strings.TrimPrefix(rr.String(), rr.Header().String()))
	if data == want {
		return true
	}
	if a, err := netip.ParseAddr(want); err == nil {
		if b, err := netip.ParseAddr(data); err == nil {
			return a.Unmap() == b.Unmap()
		}
		return false
	}
	return strings.EqualFold(dns.Fqdn(data), dns.Fqdn(want))
}
