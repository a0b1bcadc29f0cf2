package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// checkFile is one file of a broken config: text has @@ before every place
// lvsd --check must report, msgs the expected messages (substrings, TMPDIR
// standing for the config's directory) in the same order.
type checkFile struct {
	name string
	text string
	msgs []string
}

// wantErr is one expected `file:line:col: message` line.
type wantErr struct {
	file      string
	line, col int
	msg       string
}

// placeMarkers removes the @@ markers from text and returns their
// positions (1-based line and byte column).
func placeMarkers(text string) (string, [][2]int) {
	var out strings.Builder
	var pos [][2]int
	for i, line := range strings.Split(text, "\n") {
		if i > 0 {
			out.WriteByte('\n')
		}
		for {
			j := strings.Index(line, "@@")
			if j < 0 {
				break
			}
			pos = append(pos, [2]int{i + 1, j + 1})
			line = line[:j] + line[j+2:]
		}
		out.WriteString(line)
	}
	return out.String(), pos
}

// runLVSD runs the test binary as lvsd (its real command line) and returns
// its exit code, stdout and stderr.
func runLVSD(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, append([]string{execLVSD}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("lvsd %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	return 0, "", ""
}

var errLine = regexp.MustCompile(`^(.+):(\d+):(\d+): (.+)$`)

// TestCheckReportsEveryError: lvsd --check on broken configs prints every
// error as file:line:col: message (in the file it is in, includes too) and
// exits non-zero.
func TestCheckReportsEveryError(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []checkFile // the first is the main config
	}{
		{"semantic checks", []checkFile{{"lvsd.toml", `
[node]
name = "dir-a"
interface = "eth0"

[[service]]
name = "pcc"
address = "198.18.1.63"
@@port = 0
scheduler = "rr"
  [[service.backend]]
  @@address = "2001:db8::65"
  [[service.backend]]
  address = "198.18.1.66"
  @@weight = 70000

[[service]]
name = "nat"
address = "198.18.1.64"
port = 0
persistent = true
forward = "nat"
  @@[[service.backend]]
  address = "198.18.1.65"
  [[service.backend]]
  address = "198.18.1.66"
  port = 8080
  [[service.backend]]
  @@address = "198.18.1.66"
  port = 8080

[[service]]
name = "nat-again"
@@address = "198.18.1.64"
persistent = true

[[service]]
name = "fwm"
fwmark = 8
persistent = true
@@address = "198.18.1.63"
@@port = 80
  [[service.backend]]
  address = "198.18.1.65"
  @@weight = -1
`, []string{
			"port 0 (all ports) needs persistence",
			"backend 2001:db8::65 is ipv6 but the service is ipv4",
			"weight: 70000 is out of range 0..65535",
			"nat backend 198.18.1.65 needs a port because the service port is 0",
			"duplicate backend 198.18.1.66:8080",
			`service "nat-again" duplicates virtual service tcp 198.18.1.64:0 of service "nat"`,
			"an fwmark service has no address",
			"an fwmark service has no port",
			"weight: -1 is out of range 0..65535",
		}}}},
		{"keys, types and values", []checkFile{{"lvsd.toml", `
[node]
@@nmae = "dir-a"
[ipvs]
@@resync_interval = "30 seconds"
[[service]]
name = "s"
@@adress = "198.18.1.63"
address = "198.18.1.63"
@@port = "80"
@@persistence = 500
@@omega = 1
  [[service.backend]]
  address = "198.18.1.65"
  @@frobnicate = true
@@[bogus]
`, []string{
			`unknown key "node.nmae" (did you mean "name"?)`,
			`ipvs.resync_interval: invalid duration "30 seconds"`,
			`unknown key "service.adress" (did you mean "address"?)`,
			"service.port: want an integer, got string",
			`service.persistence: want a duration string such as "500ms"`,
			"service.omega: want true or false, got integer",
			`unknown key "service.backend.frobnicate"`,
			`unknown key "bogus"`,
		}}}},
		{"errors in included files", []checkFile{
			{"lvsd.toml", `
include = ["conf.d/*.toml"]
[node]
name = "dir-a"
interface = "eth0"
[[vip_group]]
name = "web"
addresses = [@@"198.18.0.100"]
`, []string{`"198.18.0.100" needs a prefix length`}},
			{"conf.d/a.toml", `
[[service]]
name = "a"
address = "198.18.1.63"
port = 80
  [[service.backend]]
  address = "198.18.1.65"
  @@port = 8080
`, []string{"dr backends cannot change the port: port must be the service port (80)"}},
			{"conf.d/b.toml", `
[[service]]
name = "b"
@@address = "198.18.1.63"
port = 80
  [[service.backend]]
  address = "198.18.1.66"
  @@weight = 65536
`, []string{`service "b" duplicates virtual service tcp 198.18.1.63:80 of service "a"`, "weight: 65536 is out of range"}},
		}},
		{"heartbeat too large", []checkFile{{"lvsd.toml", `
[node]
name = "director-a"
interface = "eth0"

[cluster]
bind = "198.18.0.11:7946"
peers = ["198.18.0.12:7946"]
insecure = true
members = ["director-a", "director-b", "witness-1"]
witnesses = ["witness-1"]

@@[[vip_group]]
name = "group-00"
addresses = ["198.18.9.0/32"]
` + manyGroups(1, 45), []string{"45 groups need a 1390-byte heartbeat"}}}},
		// What lvsd refused only at start (the election's limits, the
		// control token) or let through wrong (sorry server ports), and
		// a backend check override that repeated its service check's errors.
		{"refused at start", []checkFile{
			{"lvsd.toml", `
[node]
name = "dir-a"
interface = "eth0"

[cluster]
bind = "198.18.0.11:7946"
insecure = true
@@heartbeat_interval = "60ms"

[control]
listen = "127.0.0.1:9120"
@@token_file = "token"

[[track_script]]
name = "chk"
command = ["/bin/true"]
@@weight = 254

[[vip_group]]
name = "web"
addresses = ["198.18.1.63/32"]
@@garp_count = 0
track_interface = [{ name = "eth1", @@weight = 10 }]
track_service = [{ name = "nat", @@weight = 5 }]

[[service]]
name = "nat"
address = "198.18.1.63"
persistent = true
forward = "nat"
@@sorry_server = "198.18.2.9"
  [[service.backend]]
  address = "198.18.1.65"
  port = 8080

[[service]]
name = "dr"
address = "198.18.1.64"
port = 80
@@sorry_server = "198.18.2.9:8080"
  [service.check]
  type = "http"
  @@timeout = "1s"
  [[service.backend]]
  address = "198.18.1.65"
    [service.backend.check]
    rise = 3
`, []string{
				"cluster.dead_after (100ms) must be at least twice heartbeat_interval (60ms)",
				"the token in TMPDIR/token has 11 characters, lvsd needs at least 16; make one with: head -c 32 /dev/urandom | base64",
				"track_script.weight: 254 is out of range -253..253",
				"vip_group.garp_count: 0 is out of range 1..100",
				"vip_group.track_interface.weight: 10 is out of range -253..0",
				"vip_group.track_service.weight: 5 is out of range -253..0",
				"nat sorry server 198.18.2.9 needs a port because the service port is 0",
				"dr sorry servers cannot change the port: port must be the service port (80)",
				"service.check.timeout (1s) must be below service.check.interval (1s)",
			}},
			{"token", "short-token\n", nil},
		}},
		{"TOML syntax", []checkFile{{"lvsd.toml", `
[node]
name = "dir-a"
interface = "unterminated@@
`, []string{"TOML syntax"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var want []wantErr
			for _, f := range tc.files {
				text, pos := placeMarkers(f.text)
				if len(pos) != len(f.msgs) {
					t.Fatalf("test bug: %s has %d markers and %d messages", f.name, len(pos), len(f.msgs))
				}
				path := filepath.Join(dir, f.name)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
				for i, p := range pos {
					want = append(want, wantErr{path, p[0], p[1], strings.ReplaceAll(f.msgs[i], "TMPDIR", dir)})
				}
			}
			main := filepath.Join(dir, tc.files[0].name)
			code, stdout, stderr := runLVSD(t, "--check", "--config", main)
			if code == 0 {
				t.Fatalf("lvsd --check exited 0 on a broken config:\n%s%s", stdout, stderr)
			}
			var got []wantErr
			for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
				m := errLine.FindStringSubmatch(line)
				if m == nil {
					continue
				}
				ln, _ := strconv.Atoi(m[2])
				col, _ := strconv.Atoi(m[3])
				got = append(got, wantErr{m[1], ln, col, m[4]})
			}
			for _, w := range want {
				found := false
				for _, g := range got {
					found = found || g.file == w.file && g.line == w.line && g.col == w.col && strings.Contains(g.msg, w.msg)
				}
				if !found {
					t.Errorf("missing %s:%d:%d: %s", w.file, w.line, w.col, w.msg)
				}
			}
			for _, g := range got {
				expected := false
				for _, w := range want {
					expected = expected || g.file == w.file && g.line == w.line && g.col == w.col
				}
				if !expected {
					t.Errorf("unexpected error %s:%d:%d: %s", g.file, g.line, g.col, g.msg)
				}
			}
			if summary := fmt.Sprintf("%s: %d error(s)", main, len(want)); !strings.Contains(stderr, summary) {
				t.Errorf("no summary %q", summary)
			}
			if t.Failed() {
				t.Logf("lvsd --check --config %s: exit %d\nstdout:\n%s\nstderr:\n%s", main, code, stdout, stderr)
			}
		})
	}
}

// TestCheckExamples: every example config in configs/ is valid.
func TestCheckExamples(t *testing.T) {
	paths, err := filepath.Glob("../configs/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 3 {
		t.Fatalf("found %d example configs in configs/, want pcc.toml, ppc.toml, fwm.toml and more", len(paths))
	}
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			code, stdout, stderr := runLVSD(t, "--check", "--config", p)
			if code != 0 || !strings.Contains(stdout, "valid") {
				t.Fatalf("lvsd --check --config %s: exit %d\n%s%s", p, code, stdout, stderr)
			}
		})
	}
}

// manyGroups is [[vip_group]] tables group-NN for NN in [from, to).
func manyGroups(from, to int) string {
	var b strings.Builder
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, "\n[[vip_group]]\nname = \"group-%02d\"\naddresses = [\"198.18.9.%d/32\"]\n", i, i)
	}
	return b.String()
}
