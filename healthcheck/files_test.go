package healthcheck

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// rotatingTLS is a server certificate the test can re-issue.
type rotatingTLS struct {
	cur atomic.Pointer[tls.Certificate]
}

func (r *rotatingTLS) config() *tls.Config {
	return &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{*r.cur.Load()}}, nil
	}}
}

// countingBuilder is New, counting the checkers it builds.
type countingBuilder struct{ n atomic.Int32 }

func (b *countingBuilder) build(s Spec) (Checker, error) {
	c, err := New(s)
	if err == nil {
		b.n.Add(1)
	}
	return c, err
}

// checkerOf returns the checker k's entry runs now.
func checkerOf(m *Monitor, k Key) Checker {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[k]; e != nil {
		return e.checker
	}
	return nil
}

// replaceFile writes data to path the way deployment tools do: a new file
// renamed over the old one.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stateIs(m *Monitor, k Key, s State) func() bool {
	return func() bool { st, _ := m.Status(k); return st.State == s && st.Checks > 0 }
}

// TestMonitorRereadsRotatedCA: the CA bundle named by ca_file is replaced in
// place (same path, new content) and the server's certificate re-issued by
// the new CA; an Update with the same specs rebuilds the checkers from the
// new bundle, and the check comes back up. An Update with the file as it was
// rebuilds nothing.
func TestMonitorRereadsRotatedCA(t *testing.T) {
	localhost := []net.IP{net.ParseIP("127.0.0.1")}
	pki1, pki2 := newPKI(t, nil, localhost), newPKI(t, nil, localhost)
	var certs rotatingTLS
	certs.cur.Store(&pki1.cert)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.TLS = certs.config()
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ap := netip.MustParseAddrPort(srv.Listener.Addr().String())

	var builds countingBuilder
	m := NewMonitor(Options{Logger: quietLogger(), NewChecker: builds.build})
	t.Cleanup(func() { m.Close() })
	caFile := pki1.caFile
	spec := Spec{Type: TypeHTTPS, CAFile: caFile, Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1}
	// Two checks of one spec (the same server in two services) share a
	// checker and the one read of the file.
	a, b := Key{"web", ap}, Key{"web2", ap}
	checks := []Check{{Key: a, Spec: spec}, {Key: b, Spec: spec}}
	if err := m.Update(checks); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "up with CA-1", func() bool { return stateIs(m, a, StateUp)() && stateIs(m, b, StateUp)() })
	if n := builds.n.Load(); n != 1 {
		t.Fatalf("%d checkers built, want 1", n)
	}

	// Unchanged file, rewritten with the same content (a new mtime): nothing
	// is rebuilt, counters go on.
	old := checkerOf(m, a)
	replaceFile(t, caFile, readFile(t, caFile))
	before, _ := m.Status(a)
	if err := m.Update(checks); err != nil {
		t.Fatal(err)
	}
	if n := builds.n.Load(); n != 1 || checkerOf(m, a) != old {
		t.Fatalf("unchanged CA file: %d checkers built, checker replaced: %v", n, checkerOf(m, a) != old)
	}
	if st, _ := m.Status(a); st.Checks < before.Checks || st.Successes < before.Successes {
		t.Fatalf("unchanged check restarted its counters: before %+v after %+v", before, st)
	}

	// The backend's certificate is re-issued by CA-2: down.
	certs.cur.Store(&pki2.cert)
	waitFor(t, 10*time.Second, "down once the cert is from CA-2", stateIs(m, a, StateDown))
	if st, _ := m.Status(a); st.Reason != "tls: certificate signed by unknown authority" {
		t.Fatalf("reason %q", st.Reason)
	}

	// CA-2 written to the same path, the same specs reloaded: the checkers
	// are rebuilt from it (one for both checks) and the check comes back up.
	replaceFile(t, caFile, readFile(t, pki2.caFile))
	if err := m.Update(checks); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "up again with CA-2", func() bool { return stateIs(m, a, StateUp)() && stateIs(m, b, StateUp)() })
	if n := builds.n.Load(); n != 2 {
		t.Fatalf("%d checkers built after the CA changed, want 2", n)
	}
	if checkerOf(m, a) == old || checkerOf(m, a) != checkerOf(m, b) {
		t.Fatal("checks not rebuilt onto one new checker")
	}

	// And again: nothing changed, nothing rebuilt.
	if err := m.Update(checks); err != nil {
		t.Fatal(err)
	}
	if n := builds.n.Load(); n != 2 {
		t.Fatalf("%d checkers built, want still 2", n)
	}
}

// TestMonitorBadCAFileAtReload: a CA file that became invalid or unreadable
// fails Update, naming the check and field, and leaves every check as it
// was; RereadFiles (what a reload with no spec change calls) does the same,
// and picks the file up once it is valid again.
func TestMonitorBadCAFileAtReload(t *testing.T) {
	pki := newPKI(t, []string{"grpc.test"}, nil)
	var certs rotatingTLS
	certs.cur.Store(&pki.cert)
	tg, _ := grpcBackend(t, grpc.Creds(credentials.NewTLS(certs.config())))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	good := readFile(t, pki.caFile)
	replaceFile(t, caFile, good)

	var builds countingBuilder
	m := NewMonitor(Options{Logger: quietLogger(), NewChecker: builds.build})
	t.Cleanup(func() { m.Close() })
	k := Key{"rpc", tg.AddrPort()}
	other := Key{"web", backend(1)} // no files: untouched by any of this
	checks := []Check{
		{Key: k, Spec: Spec{Type: TypeGRPC, TLS: true, SNI: "grpc.test", CAFile: caFile, Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1}},
		{Key: other, Spec: Spec{Type: TypeTCP, InitialDelay: time.Hour}},
	}
	if err := m.Update(checks); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "grpc over tls up", stateIs(m, k, StateUp))
	checker, otherChecker := checkerOf(m, k), checkerOf(m, other)

	for _, bad := range []struct {
		name  string
		write func()
		want  string
	}{
		{"not PEM", func() { replaceFile(t, caFile, []byte("not a certificate\n")) }, "holds no PEM certificate"},
		{"missing", func() {
			if err := os.Remove(caFile); err != nil {
				t.Fatal(err)
			}
		}, "no such file or directory"},
	} {
		bad.write()
		for name, reload := range map[string]func() error{
			"Update":      func() error { return m.Update(checks) },
			"RereadFiles": m.RereadFiles,
		} {
			before, _ := m.Status(k)
			err := reload()
			if err == nil {
				t.Fatalf("%s, %s: no error", bad.name, name)
			}
			for _, w := range []string{"check " + k.String() + ": ca_file: ", bad.want} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s, %s: error %q does not mention %q", bad.name, name, err, w)
				}
			}
			if fe := FieldErrors(err); len(fe) != 1 || fe[0].Field != "ca_file" {
				t.Errorf("%s, %s: field errors %v", bad.name, name, fe)
			}
			if checkerOf(m, k) != checker || checkerOf(m, other) != otherChecker {
				t.Fatalf("%s, %s: a failed reload replaced a checker", bad.name, name)
			}
			if st, _ := m.Status(k); st.State != StateUp || st.Checks < before.Checks || st.Successes < before.Successes {
				t.Fatalf("%s, %s: a failed reload touched the check: before %+v after %+v", bad.name, name, before, st)
			}
		}
	}
	if n := builds.n.Load(); n != 2 {
		t.Fatalf("%d checkers built, want 2 (failed reloads build none)", n)
	}

	// The same content back: nothing to rebuild. A new CA: RereadFiles
	// rebuilds only the check that reads it.
	replaceFile(t, caFile, good)
	if err := m.RereadFiles(); err != nil {
		t.Fatal(err)
	}
	if checkerOf(m, k) != checker {
		t.Fatal("rebuilt although the file is as it was")
	}
	pki2 := newPKI(t, []string{"grpc.test"}, nil)
	certs.cur.Store(&pki2.cert)
	waitFor(t, 10*time.Second, "down once the cert is from a new CA", stateIs(m, k, StateDown))
	replaceFile(t, caFile, readFile(t, pki2.caFile))
	if err := m.RereadFiles(); err != nil {
		t.Fatal(err)
	}
	if checkerOf(m, k) == checker || checkerOf(m, other) != otherChecker {
		t.Fatal("RereadFiles: want the grpc check rebuilt and the tcp check kept")
	}
	waitFor(t, 10*time.Second, "grpc up with the new CA", stateIs(m, k, StateUp))
}
