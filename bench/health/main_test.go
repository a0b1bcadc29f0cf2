package main

import (
	"strings"
	"testing"
	"time"
)

func TestBackendAddrsDistinctLoopback(t *testing.T) {
	seen := map[string]bool{}
	for i := range 50000 {
		a := backendAddr(i)
		if !a.Is4() || a.As4()[0] != 127 || a.As4()[3] == 0 || a.As4()[3] == 255 {
			t.Fatalf("backend %d: %s is not a usable 127/8 address", i, a)
		}
		if seen[a.String()] {
			t.Fatalf("backend %d: %s used twice", i, a)
		}
		seen[a.String()] = true
	}
}

func TestKeepalivedConfig(t *testing.T) {
	conf := string(keepalivedConfig(config{n: 3, interval: time.Second, timeout: 500 * time.Millisecond}))
	for _, want := range []string{"delay_loop 1\n", "real_server 127.10.0.1 8080 {", "real_server 127.10.0.3 8080 {", "connect_timeout 1\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	if n := strings.Count(conf, "TCP_CHECK"); n != 3 {
		t.Errorf("%d TCP_CHECKs, want 3", n)
	}
	if strings.Count(conf, "{") != strings.Count(conf, "}") {
		t.Errorf("unbalanced braces:\n%s", conf)
	}
}

func TestConfigValidate(t *testing.T) {
	good := config{role: "outer", n: 10, interval: time.Second, timeout: time.Second, duration: time.Second, check: "tcp", mode: "monitor", keepalived: "off"}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mut  func(*config)
		want string
	}{
		{func(c *config) { c.n = 0 }, "-n 0"},
		{func(c *config) { c.timeout = 2 * time.Second }, "timeout <= interval"},
		{func(c *config) { c.check = "icmp" }, `-check "icmp"`},
		{func(c *config) { c.mode = "x" }, `-mode "x"`},
		{func(c *config) { c.duration = time.Hour }, "-duration 1h0m0s"},
	} {
		bad := good
		c.mut(&bad)
		if err := bad.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want an error mentioning %q", err, c.want)
		}
	}
}
