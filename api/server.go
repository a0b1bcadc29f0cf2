package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Controller is what the API needs from the daemon.
type Controller interface {
	Status(ctx context.Context) (Status, error)
	Events(ctx context.Context, since time.Time, limit int) ([]Event, error)
	// BackendAction runs drain|undrain|disable|enable|add|remove.
	BackendAction(ctx context.Context, action string, req BackendRequest) (Backend, error)
	// GroupAction runs failover|demote|promote|clear.
	GroupAction(ctx context.Context, action string, group string) (Group, error)
	Reload(ctx context.Context) (CheckResult, error)
	CheckConfig(ctx context.Context) (CheckResult, error)
	// Connections lists IPVS connection entries and persistence templates,
	// of one client when client is valid.
	Connections(ctx context.Context, client netip.Addr, limit int) ([]Conn, error)
}

// Error is an error the operator can act on; Controller methods return it for
// bad requests so the API answers with Status and the hint.
type Error struct {
	Status int // HTTP status
	Msg    string
	Hint   string
}

func (e *Error) Error() string {
	if e.Hint == "" {
		return e.Msg
	}
	return e.Msg + " (" + e.Hint + ")"
}

// NotFound, BadRequest and Conflict build operator errors.
func NotFound(hint, format string, a ...any) *Error {
	return &Error{Status: http.StatusNotFound, Msg: fmt.Sprintf(format, a...), Hint: hint}
}

func BadRequest(hint, format string, a ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Msg: fmt.Sprintf(format, a...), Hint: hint}
}

func Conflict(hint, format string, a ...any) *Error {
	return &Error{Status: http.StatusConflict, Msg: fmt.Sprintf(format, a...), Hint: hint}
}

// BackendActions and GroupActions list the accepted actions.
var (
	BackendActions = []string{"drain", "undrain", "disable", "enable", "add", "remove"}
	GroupActions   = []string{"failover", "demote", "promote", "clear"}
)

// Server serves the control API.
type Server struct {
	ctl   Controller
	log   *slog.Logger
	token []byte // for TCP listeners; empty: TCP refused
	mux   *http.ServeMux
}

// NewServer builds a server. token protects TCP listeners; Unix-socket
// callers are authorised by the socket's permissions and their credentials.
func NewServer(ctl Controller, log *slog.Logger, token []byte) *Server {
	s := &Server{ctl: ctl, log: log, token: token, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /v1/status", s.status)
	s.mux.HandleFunc("GET /v1/events", s.events)
	s.mux.HandleFunc("POST /v1/backend/{action}", s.backend)
	s.mux.HandleFunc("POST /v1/group/{action}", s.group)
	s.mux.HandleFunc("GET /v1/connections", s.connections)
	s.mux.HandleFunc("POST /v1/reload", s.reload)
	s.mux.HandleFunc("POST /v1/check-config", s.checkConfig)
	return s
}

// Handler returns the API without transport authorisation (for tests and
// for callers that add their own).
func (s *Server) Handler() http.Handler { return s.mux }

type ctxKey int

const unixPeerKey ctxKey = 1

// ServeUnix serves on a Unix socket until ctx ends. The socket is created
// mode 0600 in a 0700 directory, and each connection's peer credentials must
// be root's, so file-mode mistakes alone cannot open the API.
func (s *Server) ServeUnix(ctx context.Context, path string) error {
	ln, err := ListenUnix(path)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           s.unixAuth(s.mux),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, unixPeerKey, c)
		},
	}
	return serve(ctx, hs, ln, func() { os.Remove(path) })
}

// ServeTCP serves on addr, requiring the bearer token.
func (s *Server) ServeTCP(ctx context.Context, addr string) error {
	if len(s.token) == 0 {
		return errors.New("control API on TCP needs a token (control.token_file)")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for control API on %s: %w", addr, err)
	}
	hs := &http.Server{Handler: s.tokenAuth(s.mux), ReadHeaderTimeout: 5 * time.Second}
	return serve(ctx, hs, ln, func() {})
}

func serve(ctx context.Context, hs *http.Server, ln net.Listener, cleanup func()) error {
	defer cleanup()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("control API: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
		return nil
	}
}

// ListenUnix creates the control socket: parent directory 0700, socket 0600,
// owned by the caller. A stale socket left by a crashed lvsd is replaced, but
// a live one (another lvsd answering) is an error.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket path %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s is in use by another process (is lvsd already running?)", path)
		}
		os.Remove(path)
	}
	// Create the socket with no permissions for group and others from the start.
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod control socket: %w", err)
	}
	return ln, nil
}

func (s *Server) unixAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Context().Value(unixPeerKey).(*net.UnixConn)
		uid, err := peerUID(c)
		if err != nil || uid != uint32(os.Geteuid()) {
			writeError(w, &Error{Status: http.StatusForbidden, Msg: "permission denied", Hint: "run lvsctl as root"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func peerUID(c *net.UnixConn) (uint32, error) {
	if c == nil {
		return 0, errors.New("not a unix connection")
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return cred.Uid, nil
}

func (s *Server) tokenAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), s.token) != 1 {
			writeError(w, &Error{Status: http.StatusUnauthorized, Msg: "missing or wrong token", Hint: "pass the control token (lvsctl --token-file)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.ctl.Status(r.Context())
	s.reply(w, r, st, err)
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			writeError(w, BadRequest("use RFC 3339, e.g. 2026-11-26T03:00:00Z", "bad since %q", v))
			return
		}
		since = t
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, BadRequest("use a number from 1 to 10000", "bad limit %q", v))
			return
		}
		limit = n
	}
	ev, err := s.ctl.Events(r.Context(), since, limit)
	s.reply(w, r, ev, err)
}

func (s *Server) connections(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var client netip.Addr
	if v := q.Get("client"); v != "" {
		a, err := netip.ParseAddr(v)
		if err != nil {
			writeError(w, BadRequest("give the client's IP address, e.g. 198.18.0.10", "bad client %q", v))
			return
		}
		client = a.Unmap()
	}
	limit := 1000
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000000 {
			writeError(w, BadRequest("use a number from 1 to 1000000", "bad limit %q", v))
			return
		}
		limit = n
	}
	conns, err := s.ctl.Connections(r.Context(), client, limit)
	s.reply(w, r, conns, err)
}

func (s *Server) backend(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	if !contains(BackendActions, action) {
		writeError(w, NotFound("actions: "+strings.Join(BackendActions, ", "), "unknown backend action %q", action))
		return
	}
	var req BackendRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Service == "" || req.Backend == "" {
		writeError(w, BadRequest("give a service name and a backend ADDRESS[:PORT]", "service and backend are required"))
		return
	}
	if req.Weight != nil && action != "add" {
		writeError(w, BadRequest("weight applies to add only", "weight given to %s", action))
		return
	}
	b, err := s.ctl.BackendAction(r.Context(), action, req)
	if err == nil {
		s.log.Info("operator backend action", "action", action, "service", req.Service, "backend", req.Backend)
	}
	s.reply(w, r, b, err)
}

func (s *Server) group(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	if !contains(GroupActions, action) {
		writeError(w, NotFound("actions: "+strings.Join(GroupActions, ", "), "unknown group action %q", action))
		return
	}
	var req GroupRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Group == "" {
		writeError(w, BadRequest("give a VIP group name (lvsctl status lists them)", "group is required"))
		return
	}
	g, err := s.ctl.GroupAction(r.Context(), action, req.Group)
	if err == nil {
		s.log.Info("operator group action", "action", action, "group", req.Group)
	}
	s.reply(w, r, g, err)
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	res, err := s.ctl.Reload(r.Context())
	s.replyCheck(w, r, res, err)
}

func (s *Server) checkConfig(w http.ResponseWriter, r *http.Request) {
	res, err := s.ctl.CheckConfig(r.Context())
	s.replyCheck(w, r, res, err)
}

// replyCheck answers 422 for an invalid config so scripts can tell it apart.
func (s *Server) replyCheck(w http.ResponseWriter, r *http.Request, res CheckResult, err error) {
	if err == nil && !res.OK {
		writeJSON(w, http.StatusUnprocessableEntity, res)
		return
	}
	s.reply(w, r, res, err)
}

func (s *Server) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		var ae *Error
		if !errors.As(err, &ae) {
			s.log.Error("control API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			ae = &Error{Status: http.StatusInternalServerError, Msg: err.Error(), Hint: "see lvsd's log"}
		}
		writeError(w, ae)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// maxBody bounds a request body: the largest real one is a few hundred bytes.
const maxBody = 1 << 20

func decodeBody(r *http.Request, v any) *Error {
	lr := &io.LimitedReader{R: r.Body, N: maxBody + 1}
	dec := json.NewDecoder(lr)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if lr.N <= 0 {
		return &Error{Status: http.StatusRequestEntityTooLarge, Msg: fmt.Sprintf("request body larger than %d bytes", maxBody), Hint: "send one small JSON object"}
	}
	if err != nil {
		return BadRequest("send a JSON object", "bad request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return BadRequest("send exactly one JSON object", "bad request body: data after the JSON object")
	}
	return nil
}

func writeError(w http.ResponseWriter, e *Error) {
	writeJSON(w, e.Status, ErrorBody{Error: e.Msg, Hint: e.Hint})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
