package healthcheck

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// grpcChecker calls grpc.health.v1.Health/Check. gRPC is HTTP/2 with a
// 5-byte message framing and status trailers, so net/http (h2c or h2 over
// TLS) plus protowire does it without google.golang.org/grpc and its ~9 MB
// of binary.
type grpcChecker struct {
	base
	filesRead // ca_file
	tr        *http.Transport
	scheme    string
	host      string
	request   []byte // framed HealthCheckRequest
}

// Serving statuses of grpc.health.v1.HealthCheckResponse.
var grpcServing = [...]string{"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"}

// gRPC status code names, from the gRPC status code specification.
var grpcCodes = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func newGRPC(s Spec) (*grpcChecker, error) {
	tlsCfg, read, err := tlsConfig(s, s.TLS)
	if err != nil {
		return nil, err
	}
	c := &grpcChecker{base: newBase(s), filesRead: read, scheme: "http", host: s.Host}
	var msg []byte
	if s.GRPCService != "" {
		msg = protowire.AppendTag(msg, 1, protowire.BytesType)
		msg = protowire.AppendString(msg, s.GRPCService)
	}
	c.request = binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	c.request = append(c.request, msg...)

	d := c.dialer()
	c.tr = &http.Transport{
		Proxy:             nil,
		DialContext:       d.DialContext,
		DisableKeepAlives: true,
		Protocols:         new(http.Protocols),
	}
	if tlsCfg != nil {
		c.scheme = "https"
		tlsCfg.NextProtos = []string{"h2"}
		c.tr.Protocols.SetHTTP2(true)
		c.tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialTLS(ctx, d, network, addr, tlsCfg, s.Host)
		}
	} else {
		c.tr.Protocols.SetUnencryptedHTTP2(true)
	}
	return c, nil
}

func (c *grpcChecker) Check(ctx context.Context, t Target) Result {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.result(start, c.do(ctx, t))
}

func (c *grpcChecker) do(ctx context.Context, t Target) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		c.scheme+"://"+t.String()+"/grpc.health.v1.Health/Check", bytes.NewReader(c.request))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if c.host != "" {
		req.Host = c.host
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("User-Agent", "lvsd-healthcheck")
	req.Header.Set("Grpc-Timeout", strconv.FormatInt(c.timeout.Milliseconds(), 10)+"m")
	resp, err := c.tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return failf("http %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	// Trailers-only responses carry the status in the headers.
	code := resp.Trailer.Get("Grpc-Status")
	msg := resp.Trailer.Get("Grpc-Message")
	if code == "" {
		code, msg = resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
	}
	if code == "" {
		return failf("grpc: no grpc-status in response")
	}
	if code != "0" {
		n, _ := strconv.Atoi(code)
		name := code
		if n >= 0 && n < len(grpcCodes) {
			name = grpcCodes[n]
		}
		if m, err := url.PathUnescape(msg); err == nil {
			msg = m
		}
		if msg != "" {
			return failf("grpc %s: %s", name, msg)
		}
		return failf("grpc %s", name)
	}
	status, err := parseHealthResponse(body)
	if err != nil {
		return err
	}
	if status != 1 {
		name := strconv.Itoa(int(status))
		if status < uint64(len(grpcServing)) {
			name = grpcServing[status]
		}
		return failf("grpc status %s", name)
	}
	return nil
}

// parseHealthResponse reads the status field (1) of one framed
// HealthCheckResponse.
func parseHealthResponse(b []byte) (uint64, error) {
	if len(b) < 5 {
		return 0, failf("grpc: short response")
	}
	if b[0] != 0 {
		return 0, failf("grpc: compressed response not supported")
	}
	n := binary.BigEndian.Uint32(b[1:5])
	b = b[5:]
	if uint32(len(b)) != n {
		return 0, failf("grpc: response length %d, framed as %d", len(b), n)
	}
	var status uint64
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return 0, failf("grpc: bad response")
		}
		b = b[l:]
		if num == 1 && typ == protowire.VarintType {
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return 0, failf("grpc: bad response")
			}
			status, b = v, b[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			return 0, failf("grpc: bad response")
		}
		b = b[l:]
	}
	return status, nil
}
