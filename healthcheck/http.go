package healthcheck

import (
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

// httpChecker sends one request per check on a fresh connection (keep-alive
// would hide a server that no longer accepts) and never follows redirects.
type httpChecker struct {
	base
	tr      *http.Transport
	scheme  string
	method  string
	path    string // path and query as configured
	host    string
	headers http.Header
	status  []statusRange
	re      *regexp.Regexp
	digest  []byte
	maxBody int64
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
	tlsCfg, err := tlsConfig(s, s.Type == TypeHTTPS)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	d := c.dialer()
	c.tr = &http.Transport{
		Proxy:                  nil, // never a proxy from the environment
		DialContext:            d.DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	if tlsCfg != nil {
		c.tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialTLS(ctx, d, network, addr, tlsCfg, s.Host)
		}
	}
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
// nil when TLS is not in use. Setting TLS keys without TLS is an error.
func tlsConfig(s Spec, useTLS bool) (*tls.Config, error) {
	if !useTLS {
		var errs []error
		if s.SNI != "" {
			errs = append(errs, fieldErr("sni", "only meaningful with TLS (type https, or grpc with tls)"))
		}
		if s.CAFile != "" {
			errs = append(errs, fieldErr("ca_file", "only meaningful with TLS (type https, or grpc with tls)"))
		}
		return nil, errors.Join(errs...)
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         s.SNI,
		InsecureSkipVerify: s.TLSInsecure, //nolint:gosec // operator's explicit tls_verify = false
	}
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fieldErr("ca_file", "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fieldErr("ca_file", "%s holds no PEM certificate", s.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// dialTLS dials and handshakes; the server name is sni, else the Host
// header's host, else the target address (verified against IP SANs).
func dialTLS(ctx context.Context, d *net.Dialer, network, addr string, cfg *tls.Config, host string) (net.Conn, error) {
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		name := host
		if name == "" {
			name = addr
		}
		if h, _, err := net.SplitHostPort(name); err == nil {
			name = h
		}
		cfg.ServerName = name
	}
	tc := tls.Client(conn, cfg)
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
	req, err := http.NewRequestWithContext(ctx, c.method, c.scheme+"://"+t.String()+c.path, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header = c.headers.Clone()
	if c.host != "" {
		req.Host = c.host
	}
	// RoundTrip, not a Client: redirects are answers, never followed.
	resp, err := c.tr.RoundTrip(req)
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
