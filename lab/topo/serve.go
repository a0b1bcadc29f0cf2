package topo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Listen opens a listener inside the host's namespace.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	return ln, nil
}

// ListenPacket opens a packet socket inside the host's namespace.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	return pc, nil
}

// Dial connects from the host's namespace. addr must be an IP literal with
// a port (no name resolution happens in the namespace).
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, addr, err)
	}
	return c, nil
}

// ServeHTTP serves HTTP on addr (e.g. ":80") in the host's namespace until
// cleanup; every request is answered with the host's name and a newline.
// It returns the listening address.
func (h *Host) ServeHTTP(addr string) string {
	h.topo.t.Helper()
	ln, err := h.Listen("tcp", addr)
	if err != nil {
		h.fatal("serve HTTP: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, h.name+"\n")
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(ln)
	h.topo.addCloser(func() { srv.Close() })
	return ln.Addr().String()
}

// ServeIdentify serves TCP on addr in the host's namespace until cleanup:
// on each connection it writes the host's name and a newline, then echoes
// whatever it receives. It returns the listening address.
func (h *Host) ServeIdentify(addr string) string {
	h.topo.t.Helper()
	ln, err := h.Listen("tcp", addr)
	if err != nil {
		h.fatal("serve identify: %v", err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			go func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				if _, err := io.WriteString(c, h.name+"\n"); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	h.topo.addCloser(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// HTTPGet fetches url from the host's namespace on a new connection and
// returns the body with surrounding space trimmed: with ServeHTTP servers,
// the name of the host that answered.
func (h *Host) HTTPGet(ctx context.Context, url string) (string, error) {
	tr := &http.Transport{DialContext: h.Dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: GET %s: %w", h.name, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("%s: GET %s: read body: %w", h.name, url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: GET %s: status %s", h.name, url, resp.Status)
	}
	return strings.TrimSpace(string(body)), nil
}

// Identify connects to an identify server (see ServeIdentify) at addr
// from the host's namespace and returns the name it announces.
func (h *Host) Identify(ctx context.Context, addr string) (string, error) {
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%s: identify: %w", h.name, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("%s: identify %s: read: %w", h.name, addr, err)
	}
	return strings.TrimSpace(line), nil
}
