// Package healthcheck decides which real servers are alive: checkers (tcp,
// http/https, exec, dns, grpc), a scheduler that runs many of them with
// rise/fall hysteresis, retry delay and jitter, transition reporting and an
// in-memory event history. It defines its own spec types; the daemon maps
// configuration onto them.
package healthcheck

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Type is the kind of check, as written in the config's check.type key.
type Type string

const (
	TypeNone  Type = "none" // never checked; always up
	TypeTCP   Type = "tcp"
	TypeHTTP  Type = "http"
	TypeHTTPS Type = "https"
	TypeExec  Type = "exec"
	TypeDNS   Type = "dns"
	TypeGRPC  Type = "grpc"
)

// Defaults applied by WithDefaults to zero-valued fields.
const (
	DefaultInterval = time.Second
	DefaultTimeout  = 500 * time.Millisecond
	DefaultRise     = 2
	DefaultFall     = 3
	DefaultMaxBody  = 64 << 10
)

// Spec is one backend's check, after the daemon has merged the service's
// [service.check] with the backend's override. Field names mirror the config
// keys (noted where they differ); zero values mean "default" where
// WithDefaults says so.
type Spec struct {
	Type Type // type

	Interval     time.Duration // interval
	Timeout      time.Duration // timeout; must not exceed Interval
	Rise         int           // rise: consecutive successes to come up
	Fall         int           // fall: consecutive failures to go down
	RetryDelay   time.Duration // retry_delay: next check after a failure while up; 0 = Interval
	InitialDelay time.Duration // initial_delay: max random delay before the first check
	Alpha        bool          // service alpha: start down until the first success

	Source netip.Addr // source: local address to bind; zero = any
	Port   uint16     // port: overrides the backend port; 0 = backend port

	// http, https, grpc
	Method     string            // method; default GET
	Path       string            // path; default "/"
	Host       string            // host: Host header (and SNI if SNI is empty); default the target
	Headers    map[string]string // headers
	Status     []string          // status: codes or ranges like "200-299"; default 200-299
	BodyRegex  string            // body_regex: must match the first MaxBody bytes
	BodySHA256 string            // body_sha256: hex digest of the whole body (at most MaxBody)
	MaxBody    int64             // bytes of body read at most; default 64 KiB (no config key)

	// TLS (https; grpc when TLS is set)
	TLS         bool   // grpc only: use TLS (https implies it)
	SNI         string // sni
	TLSInsecure bool   // tls_verify = false
	CAFile      string // ca_file: PEM bundle; default the system roots

	// exec
	Command []string // command: argv; ${ADDRESS} and ${PORT} are substituted
	Dynamic bool     // dynamic: exit 2..255 => up with weight code-2 (keepalived misc_dynamic)

	// dns
	QueryName string // query_name
	QueryType string // query_type; default A
	Rcode     string // rcode; default NOERROR
	Answer    string // answer: if set, some answer's data must equal it

	// grpc
	GRPCService string // grpc_service: service name in HealthCheckRequest; "" = whole server
}

// WithDefaults returns s with zero-valued fields set to their defaults.
func (s Spec) WithDefaults() Spec {
	if s.Type == "" {
		s.Type = TypeTCP
	}
	if s.Interval == 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout == 0 {
		s.Timeout = min(DefaultTimeout, s.Interval)
	}
	if s.Rise == 0 {
		s.Rise = DefaultRise
	}
	if s.Fall == 0 {
		s.Fall = DefaultFall
	}
	if s.MaxBody == 0 {
		s.MaxBody = DefaultMaxBody
	}
	switch s.Type {
	case TypeHTTP, TypeHTTPS:
		if s.Method == "" {
			s.Method = "GET"
		}
		if s.Path == "" {
			s.Path = "/"
		}
		if len(s.Status) == 0 {
			s.Status = []string{"200-299"}
		}
	case TypeDNS:
		if s.QueryType == "" {
			s.QueryType = "A"
		}
		if s.Rcode == "" {
			s.Rcode = "NOERROR"
		}
	}
	return s
}

// NeedsPort reports whether the check connects to a port (all but exec and
// none), so a target with port 0 and no Port override is an error.
func (s Spec) NeedsPort() bool {
	return s.Type != TypeExec && s.Type != TypeNone
}

// FieldError is one problem with one spec field. Field is the config key
// (with an index for lists, e.g. "status[1]"), so the config layer can point
// at the line and column it came from.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// FieldErrors returns every FieldError in err (as joined by Validate/New).
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if fe, ok := e.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		walk(errors.Unwrap(e))
	}
	walk(err)
	return out
}

// validateTiming checks the knobs the scheduler uses; checker-specific
// fields are validated when the checker is built.
func (s Spec) validateTiming() []error {
	var errs []error
	if s.Interval <= 0 {
		errs = append(errs, fieldErr("interval", "must be positive, got %s", s.Interval))
	}
	if s.Timeout <= 0 {
		errs = append(errs, fieldErr("timeout", "must be positive, got %s", s.Timeout))
	} else if s.Interval > 0 && s.Timeout > s.Interval {
		errs = append(errs, fieldErr("timeout", "%s is longer than interval %s", s.Timeout, s.Interval))
	}
	if s.Rise < 1 {
		errs = append(errs, fieldErr("rise", "must be at least 1, got %d", s.Rise))
	}
	if s.Fall < 1 {
		errs = append(errs, fieldErr("fall", "must be at least 1, got %d", s.Fall))
	}
	if s.RetryDelay < 0 {
		errs = append(errs, fieldErr("retry_delay", "must not be negative, got %s", s.RetryDelay))
	} else if s.Interval > 0 && s.RetryDelay > s.Interval {
		errs = append(errs, fieldErr("retry_delay", "%s is longer than interval %s", s.RetryDelay, s.Interval))
	}
	if s.InitialDelay < 0 {
		errs = append(errs, fieldErr("initial_delay", "must not be negative, got %s", s.InitialDelay))
	}
	if s.MaxBody < 0 {
		errs = append(errs, fieldErr("max_body", "must not be negative, got %d", s.MaxBody))
	}
	if s.Source.IsValid() && s.Source.Zone() != "" {
		errs = append(errs, fieldErr("source", "zoned address %s is not supported", s.Source))
	}
	return errs
}

// Validate reports every problem with s (after WithDefaults) as joined
// *FieldError values, building the checker to do so (regexes, CA files,
// command paths). It is what `lvsd --check` should call per backend.
func (s Spec) Validate() error {
	_, err := New(s)
	return err
}
