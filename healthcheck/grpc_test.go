package healthcheck

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// grpcBackend runs grpc-go's own health server (a test-only dependency:
// the checker itself speaks the protocol over net/http).
func grpcBackend(t *testing.T, opts ...grpc.ServerOption) (Target, *health.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return targetOf(t, ln.Addr()), hs
}

func TestGRPCCheck(t *testing.T) {
	tg, hs := grpcBackend(t)
	hs.SetServingStatus("app.Web", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("app.Down", healthpb.HealthCheckResponse_NOT_SERVING)

	cases := []struct {
		name    string
		service string
		target  Target
		ok      bool
		reason  string
	}{
		{"whole server", "", tg, true, ""},
		{"serving service", "app.Web", tg, true, ""},
		{"not serving", "app.Down", tg, false, "grpc status NOT_SERVING"},
		{"unknown service", "app.Nope", tg, false, "grpc NOT_FOUND: unknown service"},
		{"refused", "", closedPort(t), false, "connect refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mustNew(t, Spec{Type: TypeGRPC, GRPCService: c.service}).Check(context.Background(), c.target)
			if r.OK != c.ok || r.Reason != c.reason {
				t.Fatalf("got ok=%v reason=%q, want ok=%v reason=%q", r.OK, r.Reason, c.ok, c.reason)
			}
		})
	}
	t.Run("shutdown marks not serving", func(t *testing.T) {
		hs.Shutdown()
		r := mustNew(t, Spec{Type: TypeGRPC}).Check(context.Background(), tg)
		if r.OK || r.Reason != "grpc status NOT_SERVING" {
			t.Fatalf("got %+v", r)
		}
	})
}

func TestGRPCCheckNotGRPC(t *testing.T) {
	srv := httpBackend(t) // HTTP/1.1 only: no h2c
	r := mustNew(t, Spec{Type: TypeGRPC, Timeout: 300 * time.Millisecond}).Check(context.Background(), targetOf(t, srv.Listener.Addr()))
	if r.OK || r.Reason == "" {
		t.Fatalf("got %+v, want a failure", r)
	}
	t.Logf("reason against an HTTP/1.1 server: %q", r.Reason)
}

func TestGRPCCheckTLS(t *testing.T) {
	pki := newPKI(t, []string{"grpc.test"}, nil)
	tg, _ := grpcBackend(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pki.cert}})))
	r := mustNew(t, Spec{Type: TypeGRPC, TLS: true, CAFile: pki.caFile, SNI: "grpc.test"}).Check(context.Background(), tg)
	if !r.OK {
		t.Fatalf("got %+v", r)
	}
	r = mustNew(t, Spec{Type: TypeGRPC, TLS: true, CAFile: pki.caFile}).Check(context.Background(), tg)
	if r.OK || r.Reason != "tls: certificate is not valid for 127.0.0.1" {
		t.Fatalf("without sni: got %+v", r)
	}
	r = mustNew(t, Spec{Type: TypeGRPC}).Check(context.Background(), tg)
	if r.OK {
		t.Fatalf("plaintext against a TLS server succeeded: %+v", r)
	}
}
