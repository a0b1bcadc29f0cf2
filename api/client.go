package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Client talks to lvsd's control API.
type Client struct {
	base   string
	where  string // for error messages
	token  string
	http   *http.Client
	socket string
}

// NewUnixClient returns a client for the control socket at path.
func NewUnixClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{base: "http://lvsd", where: path, socket: path, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// NewTCPClient returns a client for a TCP control listener (http://host:port).
func NewTCPClient(baseURL, token string) *Client {
	return &Client{base: baseURL, where: baseURL, token: token, http: &http.Client{Timeout: 30 * time.Second}}
}

// Status fetches the node's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
}

// Events fetches up to limit events newer than since.
func (c *Client) Events(ctx context.Context, since time.Time, limit int) ([]Event, error) {
	q := url.Values{}
	if !since.IsZero() {
		q.Set("since", since.Format(time.RFC3339Nano))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var ev []Event
	return ev, c.do(ctx, http.MethodGet, "/v1/events?"+q.Encode(), nil, &ev)
}

// Connections lists IPVS connections and persistence templates, of one
// client when client is valid.
func (c *Client) Connections(ctx context.Context, client netip.Addr, limit int) ([]Conn, error) {
	q := url.Values{}
	if client.IsValid() {
		q.Set("client", client.String())
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out []Conn
	return out, c.do(ctx, http.MethodGet, "/v1/connections?"+q.Encode(), nil, &out)
}

// Backend runs a backend action.
func (c *Client) Backend(ctx context.Context, action string, req BackendRequest) (Backend, error) {
	var b Backend
	return b, c.do(ctx, http.MethodPost, "/v1/backend/"+url.PathEscape(action), req, &b)
}

// Group runs a VIP group action.
func (c *Client) Group(ctx context.Context, action, group string) (Group, error) {
	var g Group
	return g, c.do(ctx, http.MethodPost, "/v1/group/"+url.PathEscape(action), GroupRequest{Group: group}, &g)
}

// Reload asks lvsd to reload its config; an invalid config comes back as a
// CheckResult with OK false and the errors, and changes nothing.
func (c *Client) Reload(ctx context.Context) (CheckResult, error) {
	var r CheckResult
	return r, c.doCheck(ctx, "/v1/reload", &r)
}

// CheckConfig validates the config file lvsd would load on reload.
func (c *Client) CheckConfig(ctx context.Context) (CheckResult, error) {
	var r CheckResult
	return r, c.doCheck(ctx, "/v1/check-config", &r)
}

func (c *Client) doCheck(ctx context.Context, path string, out *CheckResult) error {
	err := c.do(ctx, http.MethodPost, path, struct{}{}, out)
	var ae *Error
	if errors.As(err, &ae) && ae.Status == http.StatusUnprocessableEntity {
		return nil // out holds the config errors
	}
	return err
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.explainDialError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer from lvsd: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("lvsd answered %s", resp.Status)
		}
		if resp.StatusCode == http.StatusUnprocessableEntity && out != nil {
			json.Unmarshal(data, out)
		}
		return &Error{Status: resp.StatusCode, Msg: eb.Error, Hint: eb.Hint}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode answer from lvsd: %w", err)
		}
	}
	return nil
}

func (c *Client) explainDialError(err error) error {
	switch {
	case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.EACCES):
		return &Error{Msg: fmt.Sprintf("cannot open control socket %s: permission denied", c.where), Hint: "run lvsctl as root"}
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return &Error{Msg: fmt.Sprintf("cannot reach lvsd at %s: %v", c.where, unwrapOp(err)), Hint: "is lvsd running? (systemctl status lvsd); use --socket if it listens elsewhere"}
	}
	return fmt.Errorf("talk to lvsd at %s: %w", c.where, err)
}

func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
