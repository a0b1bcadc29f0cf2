package healthcheck

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsBackend serves a small zone over UDP and TCP on one loopback port;
// "peer.test." answers with the client's address as a TXT record.
func dnsBackend(t *testing.T) Target {
	t.Helper()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		_, isUDP := w.RemoteAddr().(*net.UDPAddr)
		name := q.Question[0].Name
		rr := func(s string) dns.RR {
			r, err := dns.NewRR(s)
			if err != nil {
				panic(err)
			}
			return r
		}
		switch name {
		case "ok.test.":
			m.Answer = append(m.Answer, rr("ok.test. 60 IN A 198.18.0.5"), rr("ok.test. 60 IN A 198.18.0.6"))
		case "v6.test.":
			m.Answer = append(m.Answer, rr("v6.test. 60 IN AAAA 2001:db8::5"))
		case "alias.test.":
			m.Answer = append(m.Answer, rr("alias.test. 60 IN CNAME Target.Test."))
		case "peer.test.":
			host, _, _ := net.SplitHostPort(w.RemoteAddr().String())
			m.Answer = append(m.Answer, rr("peer.test. 60 IN TXT \""+host+"\""))
		case "servfail.test.":
			m.Rcode = dns.RcodeServerFailure
		case "tcponly.test.":
			if isUDP {
				m.Truncated = true
			} else {
				m.Answer = append(m.Answer, rr("tcponly.test. 60 IN A 198.18.0.9"))
			}
		case "slow.test.":
			time.Sleep(time.Second)
		default:
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		t.Skipf("tcp port %s taken: %v", pc.LocalAddr(), err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: handler}
	tcp := &dns.Server{Listener: ln, Handler: handler}
	ready := make(chan struct{}, 2)
	udp.NotifyStartedFunc = func() { ready <- struct{}{} }
	tcp.NotifyStartedFunc = func() { ready <- struct{}{} }
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	<-ready
	<-ready
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
	return targetOf(t, ln.Addr())
}

func TestDNSCheck(t *testing.T) {
	tg := dnsBackend(t)
	cases := []struct {
		name   string
		spec   Spec
		ok     bool
		reason string
	}{
		{"noerror", Spec{QueryName: "ok.test"}, true, ""},
		{"answer matches second record", Spec{QueryName: "ok.test.", Answer: "198.18.0.6"}, true, ""},
		{"answer missing", Spec{QueryName: "ok.test.", Answer: "198.18.0.7"}, false, `dns answer "198.18.0.7" not found`},
		{"aaaa answer", Spec{QueryName: "v6.test.", QueryType: "aaaa", Answer: "2001:DB8:0::5"}, true, ""},
		{"cname answer ignores case and dot", Spec{QueryName: "alias.test.", QueryType: "CNAME", Answer: "target.test"}, true, ""},
		{"servfail", Spec{QueryName: "servfail.test."}, false, "dns rcode SERVFAIL"},
		{"expected nxdomain", Spec{QueryName: "missing.test.", Rcode: "NXDOMAIN"}, true, ""},
		{"unexpected nxdomain", Spec{QueryName: "missing.test."}, false, "dns rcode NXDOMAIN"},
		{"truncated falls back to tcp", Spec{QueryName: "tcponly.test.", Answer: "198.18.0.9"}, true, ""},
		{"timeout", Spec{QueryName: "slow.test.", Timeout: 200 * time.Millisecond}, false, "timeout after 200ms"},
		{"source address", Spec{QueryName: "peer.test.", QueryType: "TXT", Answer: `"127.0.0.9"`, Source: netip.MustParseAddr("127.0.0.9")}, true, ""},
		{"default source", Spec{QueryName: "peer.test.", QueryType: "TXT", Answer: `"127.0.0.9"`}, false, `dns answer "\"127.0.0.9\"" not found`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.spec
			s.Type = TypeDNS
			r := mustNew(t, s).Check(context.Background(), tg)
			if r.OK != c.ok || r.Reason != c.reason {
				t.Fatalf("got ok=%v reason=%q, want ok=%v reason=%q", r.OK, r.Reason, c.ok, c.reason)
			}
		})
	}
}

func TestDNSSpecErrors(t *testing.T) {
	cases := []struct {
		spec   Spec
		fields []string
	}{
		{Spec{Type: TypeDNS}, []string{"query_name"}},
		{Spec{Type: TypeDNS, QueryName: "bad..name"}, []string{"query_name"}},
		{Spec{Type: TypeDNS, QueryName: "ok.test", QueryType: "AXYZ", Rcode: "FINE"}, []string{"query_type", "rcode"}},
	}
	for _, c := range cases {
		err := c.spec.Validate()
		var got []string
		for _, fe := range FieldErrors(err) {
			got = append(got, fe.Field)
		}
		if !slices.Equal(got, c.fields) {
			t.Errorf("%+v: fields %v, want %v (err %v)", c.spec, got, c.fields, err)
		}
	}
}
