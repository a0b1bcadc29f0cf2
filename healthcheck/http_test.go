package healthcheck

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func httpBackend(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("hello world")) })
	mux.HandleFunc("/503", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/slowbody", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("x", 100<<10) + "TAIL"))
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "app.example" || r.Header.Get("X-Check") != "lvsd" || r.Method != http.MethodHead {
			w.WriteHeader(http.StatusBadRequest)
		}
	})
	mux.HandleFunc("/echo-host", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(r.Host)) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestHTTPCheck(t *testing.T) {
	srv := httpBackend(t)
	tg := targetOf(t, srv.Listener.Addr())
	sum := sha256.Sum256([]byte("hello world"))
	digest := hex.EncodeToString(sum[:])

	cases := []struct {
		name   string
		spec   Spec
		target Target
		ok     bool
		reason string
	}{
		{"ok", Spec{Path: "/ok"}, tg, true, ""},
		{"default path 404", Spec{}, tg, false, "http 404"},
		{"status 503", Spec{Path: "/503"}, tg, false, "http 503"},
		{"503 accepted by list", Spec{Path: "/503", Status: []string{"200", "500-503"}}, tg, true, ""},
		{"redirect not followed", Spec{Path: "/redirect"}, tg, false, "http 302"},
		{"redirect accepted", Spec{Path: "/redirect", Status: []string{"200-399"}}, tg, true, ""},
		{"timeout", Spec{Path: "/slow", Timeout: 200 * time.Millisecond}, tg, false, "timeout after 200ms"},
		{"timeout reading body", Spec{Path: "/slowbody", BodyRegex: "never", Timeout: 200 * time.Millisecond}, tg, false, "timeout after 200ms"},
		{"refused", Spec{Path: "/ok"}, closedPort(t), false, "connect refused"},
		{"regex ok", Spec{Path: "/ok", BodyRegex: `^hello w.rld$`}, tg, true, ""},
		{"regex mismatch", Spec{Path: "/ok", BodyRegex: `goodbye`}, tg, false, "body does not match regex"},
		{"regex on first MaxBody bytes", Spec{Path: "/big", BodyRegex: `TAIL`}, tg, false, "body does not match regex"},
		{"regex with room", Spec{Path: "/big", BodyRegex: `TAIL`, MaxBody: 200 << 10}, tg, true, ""},
		{"digest ok", Spec{Path: "/ok", BodySHA256: strings.ToUpper(digest)}, tg, true, ""},
		{"digest mismatch", Spec{Path: "/503", Status: []string{"503"}, BodySHA256: digest}, tg, false, "body digest mismatch"},
		{"digest of too big body", Spec{Path: "/big", BodySHA256: digest}, tg, false, "body larger than 65536 bytes"},
		{"method host headers", Spec{Path: "/headers", Method: "HEAD", Host: "app.example", Headers: map[string]string{"X-Check": "lvsd"}}, tg, true, ""},
		{"headers missing", Spec{Path: "/headers", Method: "HEAD"}, tg, false, "http 400"},
		{"https to plain server", Spec{Type: TypeHTTPS, Path: "/ok", TLSInsecure: true}, tg, false, "tls: server did not answer with tls"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.spec
			if s.Type == "" {
				s.Type = TypeHTTP
			}
			r := mustNew(t, s).Check(context.Background(), c.target)
			if r.OK != c.ok || r.Reason != c.reason {
				t.Fatalf("got ok=%v reason=%q, want ok=%v reason=%q", r.OK, r.Reason, c.ok, c.reason)
			}
			if r.Latency <= 0 {
				t.Fatalf("latency not measured: %v", r.Latency)
			}
		})
	}
	t.Run("query string kept", func(t *testing.T) {
		r := mustNew(t, Spec{Type: TypeHTTP, Path: "/ok?probe=1"}).Check(context.Background(), tg)
		if !r.OK {
			t.Fatalf("got %+v", r)
		}
	})
}

// testPKI is a throwaway CA and a server certificate for the given names.
type testPKI struct {
	caFile string
	cert   tls.Certificate
}

func newPKI(t *testing.T, dnsNames []string, ips []net.IP) testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lvsd test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "backend"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     dnsNames,
		IPAddresses:  ips,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return testPKI{caFile: caFile, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

func TestHTTPSCheck(t *testing.T) {
	pki := newPKI(t, []string{"good.test"}, []net.IP{net.ParseIP("127.0.0.1")})
	var mu sync.Mutex
	var sawSNI []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("secure"))
	}))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{pki.cert},
		GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			mu.Lock()
			sawSNI = append(sawSNI, hi.ServerName)
			mu.Unlock()
			return nil, nil
		},
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are the point
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tg := targetOf(t, srv.Listener.Addr())
	lastSNI := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(sawSNI) == 0 {
			return "<none>"
		}
		return sawSNI[len(sawSNI)-1]
	}

	cases := []struct {
		name    string
		spec    Spec
		ok      bool
		reason  string
		wantSNI string // "" = no SNI sent (IP target)
	}{
		{"verify with CA, IP SAN", Spec{CAFile: pki.caFile}, true, "", ""},
		{"verify without CA", Spec{}, false, "tls: certificate signed by unknown authority", ""},
		{"no verify without CA", Spec{TLSInsecure: true}, true, "", ""},
		{"sni matches", Spec{CAFile: pki.caFile, SNI: "good.test"}, true, "", "good.test"},
		{"sni mismatch", Spec{CAFile: pki.caFile, SNI: "wrong.test"}, false, "tls: certificate is not valid for wrong.test", "wrong.test"},
		{"sni mismatch ignored without verify", Spec{TLSInsecure: true, SNI: "wrong.test"}, true, "", "wrong.test"},
		{"host header used as sni", Spec{CAFile: pki.caFile, Host: "good.test"}, true, "", "good.test"},
		{"status and body over tls", Spec{CAFile: pki.caFile, BodyRegex: "^secure$"}, true, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.spec
			s.Type = TypeHTTPS
			r := mustNew(t, s).Check(context.Background(), tg)
			if r.OK != c.ok || r.Reason != c.reason {
				t.Fatalf("got ok=%v reason=%q, want ok=%v reason=%q", r.OK, r.Reason, c.ok, c.reason)
			}
			if got := lastSNI(); got != c.wantSNI {
				t.Fatalf("server saw SNI %q, want %q", got, c.wantSNI)
			}
		})
	}
}

func TestHTTPSpecErrors(t *testing.T) {
	badPEM := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(badPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		spec   Spec
		fields []string
		text   string
	}{
		{Spec{Type: TypeHTTP, BodyRegex: "a("}, []string{"body_regex"}, "missing closing )"},
		{Spec{Type: TypeHTTP, Status: []string{"200", "2xx", "700", "300-200"}}, []string{"status[1]", "status[2]", "status[3]"}, `"2xx" is not a status code`},
		{Spec{Type: TypeHTTP, BodySHA256: "abc"}, []string{"body_sha256"}, "64 hex digits"},
		{Spec{Type: TypeHTTP, Path: "healthz"}, []string{"path"}, "must start with /"},
		{Spec{Type: TypeHTTP, Path: "/a b"}, []string{"path"}, "percent-encode"},
		{Spec{Type: TypeHTTP, Method: "GE T"}, []string{"method"}, "not a valid HTTP method"},
		{Spec{Type: TypeHTTP, Headers: map[string]string{"Bad Name": "x"}}, []string{"headers"}, "not a valid header name"},
		{Spec{Type: TypeHTTP, Headers: map[string]string{"Host": "x"}}, []string{"headers"}, "host key"},
		{Spec{Type: TypeHTTP, SNI: "x.test"}, []string{"sni"}, "only meaningful with TLS"},
		{Spec{Type: TypeHTTPS, CAFile: "/nonexistent/ca.pem"}, []string{"ca_file"}, "no such file"},
		{Spec{Type: TypeHTTPS, CAFile: badPEM}, []string{"ca_file"}, "no PEM certificate"},
		{Spec{Type: TypeHTTP, Timeout: 2 * time.Second, Interval: time.Second}, []string{"timeout"}, "2s is longer than interval 1s"},
		{Spec{Type: TypeHTTP, Rise: -1, Fall: -2, RetryDelay: -time.Second}, []string{"rise", "fall", "retry_delay"}, "must be at least 1"},
		{Spec{Type: "icmp"}, []string{"type"}, `unknown check type "icmp"`},
	}
	for _, c := range cases {
		err := c.spec.Validate()
		if err == nil {
			t.Errorf("%+v: no error", c.spec)
			continue
		}
		if !strings.Contains(err.Error(), c.text) {
			t.Errorf("%+v: error %q does not mention %q", c.spec, err, c.text)
		}
		var got []string
		for _, fe := range FieldErrors(err) {
			got = append(got, fe.Field)
		}
		if strings.Join(got, ",") != strings.Join(c.fields, ",") {
			t.Errorf("%+v: error fields %v, want %v (error: %v)", c.spec, got, c.fields, err)
		}
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%+v: error is not a *FieldError", c.spec)
		}
	}
}

func TestHTTPSourceAddress(t *testing.T) {
	peers := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case peers <- r.RemoteAddr:
		default:
		}
	}))
	defer srv.Close()
	r := mustNew(t, Spec{Type: TypeHTTP, Source: netip.MustParseAddr("127.0.0.9")}).Check(context.Background(), targetOf(t, srv.Listener.Addr()))
	if !r.OK {
		t.Fatalf("got %+v", r)
	}
	if p := <-peers; !strings.HasPrefix(p, "127.0.0.9:") {
		t.Fatalf("server saw %s, want source 127.0.0.9", p)
	}
}
