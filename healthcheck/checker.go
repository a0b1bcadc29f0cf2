package healthcheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Target is the address a check connects to: the backend's address and the
// effective port (the spec's Port override already applied by the caller).
type Target struct {
	Addr netip.Addr
	Port uint16
}

func (t Target) String() string { return netip.AddrPortFrom(t.Addr, t.Port).String() }

// AddrPort returns the target as one value.
func (t Target) AddrPort() netip.AddrPort { return netip.AddrPortFrom(t.Addr, t.Port) }

// NoWeight in Result.Weight means the check says nothing about the weight.
const NoWeight = -1

// Result is the outcome of one check.
type Result struct {
	OK bool
	// Weight is set by dynamic exec checks (0..253); NoWeight otherwise.
	Weight int
	// Reason is short and specific: "http 503", "connect refused",
	// "timeout after 500ms". Empty for a plain success.
	Reason  string
	Latency time.Duration
}

// Checker runs one kind of check against a target. It must honour ctx and
// its own timeout, and be safe for concurrent use on different targets.
type Checker interface {
	Check(ctx context.Context, t Target) Result
}

// New builds the checker for s (after WithDefaults). Every problem with s is
// returned, joined, as *FieldError values.
func New(s Spec) (Checker, error) {
	s = s.WithDefaults()
	errs := s.validateTiming()
	var c Checker
	var err error
	switch s.Type {
	case TypeNone:
		c = noneChecker{}
	case TypeTCP:
		c = newTCP(s)
	case TypeHTTP, TypeHTTPS:
		c, err = newHTTP(s)
	case TypeExec:
		c, err = newExec(s)
	case TypeDNS:
		c, err = newDNS(s)
	case TypeGRPC:
		c, err = newGRPC(s)
	default:
		err = fieldErr("type", "unknown check type %q (want tcp, http, https, exec, dns, grpc or none)", s.Type)
	}
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

type noneChecker struct{}

func (noneChecker) Check(context.Context, Target) Result { return Result{OK: true, Weight: NoWeight} }

// base holds what every network checker shares.
type base struct {
	timeout time.Duration
	source  netip.Addr
}

func newBase(s Spec) base { return base{timeout: s.Timeout, source: s.Source} }

func (b base) dialer() *net.Dialer {
	d := &net.Dialer{Timeout: b.timeout}
	if b.source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: b.source.AsSlice()}
	}
	return d
}

// result builds a Result, classifying err into a short reason.
func (b base) result(start time.Time, err error) Result {
	r := Result{OK: err == nil, Weight: NoWeight, Latency: time.Since(start)}
	if err != nil {
		r.Reason = b.reason(err)
	}
	return r
}

func (b base) timeoutReason() string { return "timeout after " + b.timeout.String() }

// reason turns a dial/read/TLS error into a short operator-facing phrase.
func (b base) reason(err error) string {
	var fail checkFailure
	if errors.As(err, &fail) {
		return string(fail)
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		return b.timeoutReason()
	}
	if errors.Is(err, context.Canceled) {
		return "canceled"
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connect refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "source address not available"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "connection closed early"
	}
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var recHdr tls.RecordHeaderError
	var verifyErr *tls.CertificateVerificationError
	var alert tls.AlertError
	switch {
	case errors.As(err, &unknownCA):
		return "tls: certificate signed by unknown authority"
	case errors.As(err, &hostErr):
		return "tls: certificate is not valid for " + hostErr.Host
	case errors.As(err, &invalid):
		if invalid.Reason == x509.Expired {
			return "tls: certificate expired or not yet valid"
		}
		return "tls: invalid certificate"
	case errors.As(err, &recHdr):
		return "tls: server did not answer with tls"
	case errors.As(err, &alert):
		return "tls: alert " + alert.Error()
	case errors.As(err, &verifyErr):
		return "tls: " + verifyErr.Err.Error()
	}
	msg := err.Error()
	if len(msg) > 120 {
		msg = msg[:120] + "…"
	}
	return msg
}

// checkFailure is a verdict (not an I/O error) whose text is the reason.
type checkFailure string

func (f checkFailure) Error() string { return string(f) }

func failf(format string, args ...any) error { return checkFailure(fmt.Sprintf(format, args...)) }

func portString(p uint16) string { return strconv.Itoa(int(p)) }
