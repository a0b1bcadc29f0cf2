package healthcheck

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// httpChecker sends one HTTP/1.1 request per check on a fresh connection
// (keep-alive would hide a server that no longer accepts) and never follows
// redirects. It writes the request and reads the response itself with
// net/http's Request.Write and ReadResponse rather than a Transport, whose
// pooling and per-connection goroutines cost several times more CPU per
// check and buy nothing here.
type httpChecker struct {
	base
	filesRead // ca_file
	d         *net.Dialer
	tls       *tls.Config // nil for plain http
	scheme    string
	method    string
	path      string // path and query as configured
	host      string
	headers   http.Header
	status    []statusRange
	re        *regexp.Regexp
	digest    []byte
	maxBody   int64
}

type statusRange struct{ lo, hi int }

func (r statusRange) String() string {
	if r.lo == r.hi {
		return strconv.Itoa(r.lo)
	}
	return fmt.Sprintf("%d-%d", r.lo, r.hi)
}

// parseStatus parses the status list: codes ("200") or inclusive ranges
// ("200-299"), each within 100..599.
func parseStatus(list []string) ([]statusRange, error) {
	var errs []error
	out := make([]statusRange, 0, len(list))
	for i, s := range list {
		field := fmt.Sprintf("status[%d]", i)
		loS, hiS, isRange := strings.Cut(strings.TrimSpace(s), "-")
		lo, err1 := strconv.Atoi(strings.TrimSpace(loS))
		hi := lo
		var err2 error
		if isRange {
			hi, err2 = strconv.Atoi(strings.TrimSpace(hiS))
		}
		switch {
		case err1 != nil || err2 != nil:
			errs = append(errs, fieldErr(field, "%q is not a status code or range like 200-299", s))
		case lo < 100 || hi > 599:
			errs = append(errs, fieldErr(field, "%q is outside 100..599", s))
		case lo > hi:
			errs = append(errs, fieldErr(field, "%q: range start is above its end", s))
		default:
			out = append(out, statusRange{lo, hi})
		}
	}
	if len(list) == 0 {
		errs = append(errs, fieldErr("status", "must list at least one code or range"))
	}
	return out, errors.Join(errs...)
}

func newHTTP(s Spec) (*httpChecker, error) {
	var errs []error
	c := &httpChecker{
		base:    newBase(s),
		scheme:  string(s.Type),
		method:  s.Method,
		path:    s.Path,
		host:    s.Host,
		headers: make(http.Header, len(s.Headers)+1),
		maxBody: s.MaxBody,
	}
	if !validMethod(s.Method) {
		errs = append(errs, fieldErr("method", "%q is not a valid HTTP method", s.Method))
	}
	if !strings.HasPrefix(s.Path, "/") {
		errs = append(errs, fieldErr("path", "%q must start with /", s.Path))
	} else if strings.ContainsFunc(s.Path, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		errs = append(errs, fieldErr("path", "%q has spaces or control characters; percent-encode them", s.Path))
	} else if _, err := url.ParseRequestURI(s.Path); err != nil {
		errs = append(errs, fieldErr("path", "%q is not a valid request path", s.Path))
	}
	if s.Host != "" && strings.ContainsAny(s.Host, " \t\r\n/") {
		errs = append(errs, fieldErr("host", "%q is not a valid host", s.Host))
	}
	c.headers.Set("User-Agent", "lvsd-healthcheck")
	for k, v := range s.Headers {
		switch {
		case !httpguts.ValidHeaderFieldName(k):
			errs = append(errs, fieldErr("headers", "%q is not a valid header name", k))
		case !httpguts.ValidHeaderFieldValue(v):
			errs = append(errs, fieldErr("headers", "value of %q has invalid characters", k))
		case strings.EqualFold(k, "Host"):
			errs = append(errs, fieldErr("headers", "set the Host header with the host key"))
		default:
			c.headers.Set(k, v)
		}
	}
	var err error
	if c.status, err = parseStatus(s.Status); err != nil {
		errs = append(errs, err)
	}
	if s.BodyRegex != "" {
		if c.re, err = regexp.Compile(s.BodyRegex); err != nil {
			errs = append(errs, fieldErr("body_regex", "%v", err))
		}
	}
	if s.BodySHA256 != "" {
		if c.digest, err = hex.DecodeString(s.BodySHA256); err != nil || len(c.digest) != sha256.Size {
			errs = append(errs, fieldErr("body_sha256", "must be 64 hex digits, got %q", s.BodySHA256))
		}
	}
	tlsCfg, read, err := tlsConfig(s, s.Type == TypeHTTPS)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c.d = c.dialer()
	c.d.KeepAlive = -1
	c.tls, c.filesRead = tlsCfg, read
	return c, nil
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if !httpguts.IsTokenRune(r) {
			return false
		}
	}
	return true
}

// tlsConfig builds the client TLS config from sni, tls_verify and ca_file;
// nil when TLS is not in use. Setting TLS keys without TLS is an error. It
// also returns what it read from files, for the checker to keep.
func tlsConfig(s Spec, useTLS bool) (*tls.Config, filesRead, error) {
	if !useTLS {
		var errs []error
		if s.SNI != "" {
			errs = append(errs, fieldErr("sni", "only meaningful with TLS (type https, or grpc with tls)"))
		}
		if s.CAFile != "" {
			errs = append(errs, fieldErr("ca_file", "only meaningful with TLS (type https, or grpc with tls)"))
		}
		return nil, nil, errors.Join(errs...)
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         s.SNI,
		InsecureSkipVerify: s.TLSInsecure, //nolint:gosec // operator's explicit tls_verify = false
	}
	var read filesRead
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, nil, fieldErr("ca_file", "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fieldErr("ca_file", "%s holds no PEM certificate", s.CAFile)
		}
		cfg.RootCAs = pool
		read = append(read, stampOf("ca_file", s.CAFile, pem))
	}
	return cfg, read, nil
}

// serverName returns cfg with the name to send and verify: sni, else the
// Host header's host, else the target address (verified against IP SANs).
func serverName(cfg *tls.Config, host, addr string) *tls.Config {
	if cfg.ServerName != "" {
		return cfg
	}
	cfg = cfg.Clone()
	name := host
	if name == "" {
		name = addr
	}
	if h, _, err := net.SplitHostPort(name); err == nil {
		name = h
	}
	cfg.ServerName = name
	return cfg
}

// dialTLS dials and handshakes (for the grpc checker's HTTP/2 transport).
func dialTLS(ctx context.Context, d *net.Dialer, network, addr string, cfg *tls.Config, host string) (net.Conn, error) {
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(conn, serverName(cfg, host, addr))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return tc, nil
}

func (c *httpChecker) Check(ctx context.Context, t Target) Result {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.result(start, c.do(ctx, t))
}

func (c *httpChecker) do(ctx context.Context, t Target) error {
	addr := t.String()
	deadline, _ := ctx.Deadline()
	conn, err := c.d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if c.tls != nil {
		tc := tls.Client(conn, serverName(c.tls, c.host, addr))
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	req := &http.Request{
		Method:     c.method,
		URL:        &url.URL{Scheme: c.scheme, Host: addr, Opaque: c.path},
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     c.headers,
		Host:       c.host,
		Close:      true, // "Connection: close"
	}
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 4096), req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if !c.statusOK(resp.StatusCode) {
		return failf("http %d", resp.StatusCode)
	}
	if c.re == nil && c.digest == nil {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	truncated := int64(len(body)) > c.maxBody
	if truncated {
		body = body[:c.maxBody]
	}
	if c.digest != nil {
		if truncated {
			return failf("body larger than %d bytes", c.maxBody)
		}
		sum := sha256.Sum256(body)
		if !bytes.Equal(sum[:], c.digest) {
			return failf("body digest mismatch")
		}
	}
	if c.re != nil && !c.re.Match(body) {
		return failf("body does not match regex")
	}
	return nil
}

func (c *httpChecker) statusOK(code int) bool {
	for _, r := range c.status {
		if code >= r.lo && code <= r.hi {
			return true
		}
	}
	return false
}
