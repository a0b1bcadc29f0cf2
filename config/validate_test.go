package config

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// Each case is one config with @@ before every place an error is expected,
// and the expected messages in the same order. Every check must point at the
// offending key (or table header) and say what is wrong.
var semanticCases = []struct {
	name string
	text string
	msgs []string
}{
	// Families and addresses.
	{"backend family", `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
  [[service.backend]]
  @@address = "2001:db8::1"
`, []string{"backend 2001:db8::1 is ipv6 but the service is ipv4"}},
	{"sorry server family", `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
@@sorry_server = "[2001:db8::9]:80"
`, []string{"sorry_server: 2001:db8::9 is ipv6 but the service is ipv4"}},
	{"mark destination family", `
[[service]]
name = "s"
fwmark = 8
family = "ipv6"
persistent = true
  [service.mark]
  ports = [80]
  @@destination = "198.18.1.1"
`, []string{"198.18.1.1 is ipv4 but the service family is ipv6"}},
	{"family key contradicts address", `
[[service]]
name = "s"
address = "2001:db8::1"
port = 80
@@family = "ipv4"
`, []string{"family ipv4 does not match address 2001:db8::1 (ipv6)"}},
	{"check source family", `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
  [service.check]
  type = "tcp"
  @@source = "2001:db8::5"
  [[service.backend]]
  address = "198.18.1.2"
`, []string{"check.source 2001:db8::5 is ipv6 but backend 198.18.1.2 is ipv4"}},
	{"bad addresses", `
[[service]]
name = "s"
@@address = "198.18.1.300"
port = 80
  [[service.backend]]
  @@address = "rs1"
`, []string{`service.address: "198.18.1.300" is not an IP address`, `backend.address: "rs1" is not an IP address`}},
	{"vip address without prefix", `
[node]
interface = "eth0"
[[vip_group]]
name = "g"
addresses = [@@"198.18.0.100", @@"198.18.0.101/33"]
`, []string{`"198.18.0.100" needs a prefix length, e.g. "198.18.0.100/32"`, `"198.18.0.101/33" is not an address with prefix`}},

	// Ports.
	{"port 0 without persistence", `
[[service]]
name = "s"
address = "198.18.1.1"
@@port = 0
`, []string{"port 0 (all ports) needs persistence"}},
	{"no port without persistence", `
@@[[service]]
name = "s"
address = "198.18.1.1"
`, []string{"port 0 (all ports) needs persistence"}},
	{"port out of range", `
[[service]]
name = "s"
address = "198.18.1.1"
@@port = 70000
  [[service.backend]]
  address = "198.18.1.2"
  @@port = -1
`, []string{"service.port: 70000 is out of range 0..65535", "service.backend.port: -1 is out of range 0..65535"}},
	{"nat without backend port on port 0", `
[[service]]
name = "s"
address = "198.18.1.1"
persistence = "500s"
forward = "nat"
  @@[[service.backend]]
  address = "198.18.1.2"
  [[service.backend]]
  address = "198.18.1.3"
  port = 8080
`, []string{"nat backend 198.18.1.2 needs a port because the service port is 0"}},
	{"dr backend changes port", `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
  [[service.backend]]
  address = "198.18.1.2"
  @@port = 8080
`, []string{"dr backends cannot change the port: port must be the service port (80)"}},

	// Duplicates.
	{"duplicate virtual service", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
[[service]]
name = "b"
@@address = "198.18.1.1"
port = 80
[[service]]
name = "c"
address = "198.18.1.1"
port = 80
protocol = "udp"
`, []string{`service "b" duplicates virtual service tcp 198.18.1.1:80 of service "a"`}},
	{"duplicate fwmark", `
[[service]]
name = "a"
fwmark = 8
persistent = true
[[service]]
name = "b"
@@fwmark = 8
persistent = true
[[service]]
name = "c"
fwmark = 8
family = "ipv6"
persistent = true
`, []string{`duplicates virtual service fwmark 8 (ipv4) of service "a"`}},
	{"duplicate backend", `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
  [[service.backend]]
  address = "198.18.1.2"
  [[service.backend]]
  @@address = "198.18.1.2"
  port = 80
`, []string{"duplicate backend 198.18.1.2:80"}},
	{"duplicate vip group and address", `
[node]
interface = "eth0"
[[vip_group]]
name = "g"
addresses = ["198.18.0.100/32"]
[[vip_group]]
@@name = "g"
addresses = ["198.18.0.101/32"]
[[vip_group]]
name = "h"
addresses = [@@"198.18.0.100/32"]
`, []string{`duplicate vip_group "g"`, `address 198.18.0.100 is in vip_group "g" and "h"`}},

	// Firewall marks.
	{"fwmark with address, port and protocol", `
[[service]]
name = "s"
fwmark = 8
persistent = true
@@address = "198.18.1.1"
@@port = 80
@@protocol = "tcp"
`, []string{"an fwmark service has no address", "an fwmark service has no port", "an fwmark service has no protocol"}},
	{"mark on a non-fwmark service", `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
  @@[service.mark]
  destination = "198.18.1.1"
`, []string{"[service.mark] is only for fwmark services"}},
	{"mark ports and destination", `
[[service]]
name = "s"
fwmark = 8
persistent = true
  @@[service.mark]
  ports = [80, @@0, @@65536, @@80]
`, []string{"service.mark needs a destination", "ports[1]: 0 is out of range 1..65535", "ports[2]: 65536 is out of range", "ports[3]: duplicate port 80"}},
	{"fwmark out of range", `
[[service]]
name = "a"
@@fwmark = 4294967296
persistent = true
[[service]]
name = "b"
@@fwmark = -1
persistent = true
`, []string{"service.fwmark: 4294967296 is out of range 0..4294967295", "service.fwmark: -1 is out of range"}},
	{"overlapping marks", `
[[service]]
name = "a"
fwmark = 8
persistent = true
  [service.mark]
  ports = [80, 443]
  destination = "198.18.1.1"
[[service]]
name = "b"
fwmark = 9
persistent = true
  @@[service.mark]
  ports = [443]
  destination = "198.18.1.1/32"
`, []string{`service "b" marks the same traffic (tcp 198.18.1.1/32 port 443) as service "a"`}},

	// Weights, thresholds, persistence.
	{"weights and thresholds", `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
  [[service.backend]]
  address = "198.18.1.2"
  @@weight = 65536
  [[service.backend]]
  address = "198.18.1.3"
  @@weight = -1
  [[service.backend]]
  address = "198.18.1.4"
  upper_threshold = 10
  @@lower_threshold = 20
  [[service.backend]]
  address = "198.18.1.5"
  @@lower_threshold = 20
`, []string{"weight: 65536 is out of range 0..65535", "weight: -1 is out of range 0..65535",
		"lower_threshold (20) must not exceed upper_threshold (10)", "lower_threshold needs upper_threshold"}},
	{"tunnel encapsulation", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
  [[service.backend]]
  address = "198.18.1.2"
  @@tunnel_type = "gue"
  [[service.backend]]
  address = "198.18.1.3"
  forward = "tunnel"
  @@tunnel_type = "gue"
  [[service.backend]]
  address = "198.18.1.4"
  forward = "tunnel"
  tunnel_type = "gre"
  @@tunnel_port = 6080
  [[service.backend]]
  address = "198.18.1.5"
  forward = "tunnel"
  @@tunnel_type = "vxlan"
  [[service.backend]]
  address = "198.18.1.6"
  forward = "tunnel"
  tunnel_type = "gre"
  @@tunnel_checksum = "remcsum"
  [[service.backend]]
  address = "198.18.1.7"
  forward = "tunnel"
  @@tunnel_checksum = "csum"
  [[service.backend]]
  address = "198.18.1.8"
  forward = "tunnel"
  tunnel_type = "gue"
  @@tunnel_port = 0
`, []string{`tunnel_type needs forward = "tunnel" (backend 198.18.1.2 forwards by dr)`, "a gue tunnel to 198.18.1.3 needs tunnel_port",
		"only a gue tunnel has a port (tunnel_type is gre)", `"vxlan" is not ipip, gue or gre`, "remcsum (remote checksum offload) is for gue tunnels only",
		"ipip tunnels carry no checksum", "tunnel_port: 0 is out of range 1..65535"}},
	{"persistence granularity", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
persistent = true
@@persistence_granularity = 33
[[service]]
name = "b"
address = "2001:db8::1"
port = 80
persistent = true
@@persistence_granularity = 0
[[service]]
name = "c"
address = "198.18.1.2"
port = 80
persistent = true
@@persistence_granularity = "255.0.255.0"
[[service]]
name = "d"
address = "2001:db8::2"
port = 80
persistent = true
@@persistence_granularity = "255.255.255.0"
[[service]]
name = "e"
address = "198.18.1.3"
port = 80
@@persistence_granularity = 24
`, []string{"33 is out of range 0..32 for ipv4", "0 is out of range 1..128 for ipv6", "netmask 255.0.255.0 is not contiguous",
		"IPv6 services take a prefix length", "persistence_granularity needs persistence"}},
	{"persistence values", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
@@persistence = "1500ms"
[[service]]
name = "b"
address = "198.18.1.2"
port = 80
persistence = "60s"
@@persistent = false
[[service]]
name = "c"
address = "198.18.1.3"
port = 80
@@persistence = "4294968s"
[[service]]
name = "d"
address = "198.18.1.4"
port = 80
persistence = "4294967s"
`, []string{"must be a whole number of seconds", "persistent = false conflicts with persistence", "from 1s to 1193h2m47s"}},
	{"schedulers", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
@@scheduler = "fastest"
[[service]]
name = "b"
address = "198.18.1.2"
port = 80
scheduler = "rr"
@@scheduler_flags = ["sh-port"]
[[service]]
name = "c"
address = "198.18.1.3"
port = 80
scheduler = "mh"
@@scheduler_flags = ["mh-port", "turbo"]
`, []string{`unknown scheduler "fastest"`, `"sh-port" needs scheduler "sh", not "rr"`, `unknown flag "turbo"`}},
	{"one packet on tcp", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
@@one_packet = true
[[service]]
name = "b"
address = "198.18.1.1"
port = 53
protocol = "udp"
one_packet = true
`, []string{"one_packet only affects udp services"}},
	{"quorum hysteresis", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
quorum = 2
@@quorum_hysteresis = 3
`, []string{"quorum_hysteresis (3) must not exceed quorum (2)"}},

	// Health checks.
	{"check type", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
  [service.check]
  @@type = "ping"
[[service]]
name = "b"
address = "198.18.1.2"
port = 80
  @@[service.check]
  interval = "1s"
`, []string{`unknown check type "ping"`, "service.check.type is required"}},
	{"check timing", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
  [service.check]
  type = "tcp"
  interval = "1s"
  @@timeout = "1s"
  @@rise = 0
  @@fall = 0
[[service]]
name = "b"
address = "198.18.1.2"
port = 80
  [service.check]
  type = "tcp"
  @@interval = "0s"
`, []string{"service.check.timeout (1s) must be below service.check.interval (1s)", "rise: 0 is out of range 1..1000",
		"fall: 0 is out of range 1..1000", "service.check.interval: must be above 0"}},
	{"http check fields", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
  [service.check]
  type = "http"
  @@body_regex = "a(b"
  @@body_sha256 = "abcd"
  status = [@@"2xx", @@"300-200", @@600, 204]
  @@command = ["/bin/true"]
`, []string{"bad regular expression", "want 64 hex digits", `"2xx" is not a status or a range`, "status range 300-200",
		"status range 600-600", "service.check.command is not used by http checks"}},
	{"exec and dns checks", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
  @@[service.check]
  type = "exec"
[[service]]
name = "b"
address = "198.18.1.2"
port = 53
protocol = "udp"
  @@[service.check]
  type = "dns"
  @@rcode = "WHATEVER"
  @@query_type = "BOGUS"
`, []string{"service.check.command is required", "service.check.query_name is required for dns checks",
		`unknown rcode "WHATEVER"`, `unknown DNS type "BOGUS"`}},
	{"check needs a port", `
[[service]]
name = "a"
address = "198.18.1.1"
persistence = "500s"
  [service.check]
  type = "tcp"
  @@[[service.backend]]
  address = "198.18.1.2"
  [[service.backend]]
  address = "198.18.1.3"
    [service.backend.check]
    port = 22
`, []string{"backend 198.18.1.2 has no port and check.port is not set: its tcp check needs a port"}},
	{"backend check override", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
  [service.check]
  type = "http"
  path = "/healthz"
  [[service.backend]]
  address = "198.18.1.2"
    [service.backend.check]
    @@timeout = "5s"
`, []string{"service.backend.check.timeout (5s) must be below service.backend.check.interval (1s)"}},
	{"backend check override repeats nothing", `
[[service]]
name = "a"
address = "198.18.1.1"
port = 80
  [service.check]
  type = "http"
  @@timeout = "2s"
  @@path = "nope"
  headers = { @@"Bad Header" = "x" }
  @@bogus = 1
  [[service.backend]]
  address = "198.18.1.2"
    [service.backend.check]
    rise = 3
  [[service.backend]]
  address = "198.18.1.3"
    @@[service.backend.check]
    interval = "500ms"
    @@fall = 0
[[service]]
name = "b"
address = "198.18.1.4"
port = 80
  @@[service.check]
  interval = "2s"
  [[service.backend]]
  address = "198.18.1.5"
    [service.backend.check]
    rise = 3
`, []string{
		"service.check.timeout (2s) must be below service.check.interval (1s)",
		`service.check.path: "nope" must start with /`,
		`service.check.headers.Bad Header: "Bad Header" is not a valid header name`,
		`unknown key "service.check.bogus"`,
		"service.backend.check.timeout (2s) must be below service.backend.check.interval (500ms) (timeout is inherited from [service.check] at /etc/lvsd/lvsd.toml:8:3)",
		"service.backend.check.fall: 0 is out of range 1..1000",
		"service.check.type is required",
	}},

	// Sorry servers follow the backends' port rules.
	{"sorry server ports", `
[[service]]
name = "nat0"
address = "198.18.1.1"
persistent = true
forward = "nat"
@@sorry_server = "198.18.2.9"
[[service]]
name = "nat0-zero"
address = "198.18.1.2"
persistent = true
forward = "nat"
@@sorry_server = "198.18.2.9:0"
[[service]]
name = "dr"
address = "198.18.1.3"
port = 80
@@sorry_server = "198.18.2.9:8080"
[[service]]
name = "tun"
address = "2001:db8::3"
port = 443
forward = "tunnel"
@@sorry_server = "[2001:db8::9]:8443"
[[service]]
name = "fwm"
fwmark = 8
persistent = true
@@sorry_server = "198.18.2.9:80"
`, []string{
		"service.sorry_server: nat sorry server 198.18.2.9 needs a port because the service port is 0",
		"service.sorry_server: nat sorry server 198.18.2.9 needs a port because the service port is 0",
		"service.sorry_server: dr sorry servers cannot change the port: port must be the service port (80)",
		"service.sorry_server: tunnel sorry servers cannot change the port: port must be the service port (443)",
		"service.sorry_server: dr sorry servers cannot change the port: port must be none (fwmark services keep the packet's port)",
	}},

	// VIP groups.
	{"vip group fields", `
@@[[vip_group]]
name = "g"
addresses = ["198.18.0.100/32"]
@@priority = 255
preempt = false
@@preempt_delay = "5s"
[[vip_group]]
name = "h"
interface = "eth0"
addresses = ["198.18.0.101/32"]
@@priority = 0
track_script = [@@{ name = "nope" }]
track_service = [@@{ name = "missing" }]
[[service]]
name = "s"
@@group = "absent"
address = "198.18.1.1"
port = 80
`, []string{`vip_group "g" needs an interface`, "priority: 255 is out of range 1..254", "preempt_delay has no effect with preempt = false",
		"priority: 0 is out of range 1..254", `tracks unknown track_script "nope"`, `tracks unknown service "missing"`,
		`service "s" follows unknown vip_group "absent"`}},

	// Cluster and control.
	{"cluster", `
[node]
@@name = "dir-c"
@@[cluster]
@@bind = "198.18.0.11"
peers = [@@"198.18.0.12", @@"peer:0", @@"peer-b.example:7946", "198.18.0.13:7946"]
members = ["dir-a", "dir-b", "w1"]
@@witnesses = ["w2"]
heartbeat_interval = "100ms"
@@dead_after = "199ms"
`, []string{`node name "dir-c" is not in cluster.members`, "cluster.key_file is required", `cluster.bind: "198.18.0.11" is not ip:port`,
		`cluster.peers[0]: "198.18.0.12": not host:port`, `"peer:0": port must be 1..65535`,
		`cluster.peers[2]: "peer-b.example:7946": want ip:port, the election does not resolve host names`, `"w2" is not in cluster.members`,
		"cluster.dead_after (199ms) must be at least twice heartbeat_interval (100ms)"}},
	// The election's own limits (vrrp.Spec.Validate): what lvsd would
	// refuse at start, lvsd --check refuses at the key.
	{"heartbeat below 1ms", `
[cluster]
bind = "198.18.0.11:7946"
insecure = true
@@heartbeat_interval = "500us"
dead_after = "2ms"
`, []string{"cluster.heartbeat_interval (500µs) must be at least 1ms"}},
	{"heartbeat zero", `
[cluster]
bind = "198.18.0.11:7946"
insecure = true
@@heartbeat_interval = "0s"
`, []string{"cluster.heartbeat_interval (0s) must be at least 1ms"}},
	{"dead_after default too short", `
[cluster]
bind = "198.18.0.11:7946"
insecure = true
@@heartbeat_interval = "60ms"
`, []string{"cluster.dead_after (100ms) must be at least twice heartbeat_interval (60ms)"}},
	{"dead_after zero", `
[cluster]
bind = "198.18.0.11:7946"
insecure = true
@@dead_after = "0s"
`, []string{"cluster.dead_after (0s) must be at least twice heartbeat_interval (20ms)"}},
	{"witnesses need three members", `
[node]
name = "dir-a"
[cluster]
bind = "198.18.0.11:7946"
insecure = true
members = ["dir-a", "w1"]
@@witnesses = ["w1"]
`, []string{"cluster.witnesses need at least 3 cluster.members for a majority (members has 2)"}},
	{"election names up to 64 bytes", `
[node]
@@name = "` + long65 + `"
[cluster]
bind = "198.18.0.11:7946"
insecure = true
[[track_script]]
@@name = "` + long65 + `"
command = ["/bin/true"]
[[vip_group]]
@@name = "` + long65 + `"
interface = "eth0"
addresses = ["198.18.0.100/32"]
`, []string{`node.name: "` + long65 + `" is 65 bytes long; the election's limit is 64 bytes`,
		`track_script.name: "` + long65 + `" is 65 bytes long`,
		`vip_group.name: "` + long65 + `" is 65 bytes long`}},
	{"member names up to 64 bytes", `
[node]
name = "dir-a"
[cluster]
bind = "198.18.0.11:7946"
insecure = true
members = ["dir-a", @@"` + long65 + `"]
`, []string{`cluster.members[1]: "` + long65 + `" is 65 bytes long; the election's limit is 64 bytes`}},
	{"vip group election limits", `
[node]
interface = "eth0"
[[track_script]]
name = "chk"
command = ["/bin/true"]
@@weight = -254
[[track_script]]
name = "up"
command = ["/bin/true"]
@@weight = 254
[[vip_group]]
name = "g"
@@addresses = []
@@garp_count = 0
@@garp_interval = "0s"
track_interface = [{ name = "eth1", @@weight = 5 }, { name = "eth2", @@weight = -254 }]
track_script = [{ name = "chk", @@weight = 254 }, { name = "up", @@weight = -254 }]
track_service = [{ name = "s", @@weight = 1 }, { @@name = "" }]
[[vip_group]]
name = "h"
addresses = ["198.18.0.101/32"]
@@garp_count = 101
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
`, []string{"track_script.weight: -254 is out of range -253..253", "track_script.weight: 254 is out of range -253..253",
		"vip_group.addresses: must not be empty", "vip_group.garp_count: 0 is out of range 1..100", "vip_group.garp_interval must be above 0",
		"vip_group.track_interface.weight: 5 is out of range -253..0", "vip_group.track_interface.weight: -254 is out of range -253..0",
		"vip_group.track_script.weight: 254 is out of range -253..253", "vip_group.track_script.weight: -254 is out of range -253..253",
		"vip_group.track_service.weight: 1 is out of range -253..0", "vip_group.track_service.name: must not be empty",
		"vip_group.garp_count: 101 is out of range 1..100"}},
	{"cluster bind", `
@@[cluster]
insecure = true
[[service]]
name = "x"
address = "198.18.1.1"
port = 80
`, []string{"cluster.bind is required"}},
	{"wildcard bind", `
[cluster]
@@bind = "0.0.0.0:7946"
insecure = true
`, []string{"cluster.advertise is required when bind is a wildcard"}},
	{"key file missing", `
[cluster]
bind = "198.18.0.11:7946"
@@key_file = "/etc/lvsd/none.key"
`, []string{"cluster.key_file: cannot read /etc/lvsd/none.key"}},
	{"control token", `
[control]
@@listen = "127.0.0.1:9000"
[metrics]
@@listen = "127.0.0.1"
`, []string{"control.token_file is required when control.listen is set", `metrics.listen: "127.0.0.1" is not ip:port`}},

	// Keys, types and durations.
	{"unknown keys and types", `
[node]
@@nmae = "x"
[[service]]
name = "s"
@@adress = "198.18.1.1"
@@port = "80"
address = "198.18.1.1"
@@persistence = 500
@@omega = 1
  [[service.backend]]
  address = "198.18.1.2"
  @@frobnicate = true
@@[bogus]
`, []string{`unknown key "node.nmae" (did you mean "name"?)`, `unknown key "service.adress" (did you mean "address"?)`,
		"service.port: want an integer, got string", `service.persistence: want a duration string such as "500ms"`,
		"service.omega: want true or false, got integer", `unknown key "service.backend.frobnicate"`, `unknown key "bogus"`}},
	{"metrics per_backend", `
[metrics]
listen = "127.0.0.1:9120"
@@per_backend = "no"
`, []string{"metrics.per_backend: want true or false, got string"}},
	{"durations", `
[ipvs]
@@resync_interval = "30 seconds"
[[track_script]]
name = "t"
command = ["/bin/true"]
@@interval = "-1s"
`, []string{`ipvs.resync_interval: invalid duration "30 seconds"`, `track_script.interval: duration "-1s" must not be negative`}},

	// TOML itself.
	{"duplicate key", `
[node]
name = "a"
@@name = "b"
[@@node]
`, []string{`duplicate key "name"`, "cannot define [node]: it is already a table"}},
	{"syntax error", `
[node]
name = "unterminated@@
`, []string{"TOML syntax"}},
}

// long65 is a valid name one byte over the election's limit.
var long65 = strings.Repeat("n", 65)

func TestSemanticChecks(t *testing.T) {
	for _, tc := range semanticCases {
		t.Run(tc.name, func(t *testing.T) {
			_, es, ps := load(t, tc.text)
			if len(ps) != len(tc.msgs) {
				t.Fatalf("test bug: %d markers, %d messages", len(ps), len(tc.msgs))
			}
			if len(es) == 0 {
				t.Fatalf("config loaded without errors, want %d", len(tc.msgs))
			}
			for i, p := range ps {
				wantError(t, es, p, tc.msgs[i])
			}
			// Nothing else: every error of the case is expected, once.
			if len(es) != len(ps) {
				t.Errorf("%d errors, want %d:\n%v", len(es), len(ps), es)
			}
			for _, e := range es {
				found := false
				for _, p := range ps {
					found = found || e.Pos() == p
				}
				if !found {
					t.Errorf("unexpected error %v", e)
				}
			}
		})
	}
}

func TestKeyFile(t *testing.T) {
	raw := strings.Repeat("k", 32)
	for _, tc := range []struct {
		name, content, msg string
	}{
		{"raw", raw, ""},
		{"base64", base64.StdEncoding.EncodeToString([]byte(raw)) + "\n", ""},
		{"short", "0123456789", "must hold a 32-byte key, raw or base64 (it has 10 bytes)"},
		{"base64 of 16", base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")), "must hold a 32-byte key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text, ps := strip("[node]\nname = \"dir-a\"\n[cluster]\nbind = \"198.18.0.11:7946\"\n@@key_file = \"gossip.key\"\n")
			cfg, es, _ := loadMem(t, []string{"/etc/lvsd/lvsd.toml"}, map[string]string{
				"/etc/lvsd/lvsd.toml": text, "/etc/lvsd/gossip.key": tc.content})
			if tc.msg == "" {
				if es != nil {
					t.Fatalf("unexpected errors: %v", es)
				}
				if string(cfg.Cluster.Key) != raw || cfg.Cluster.KeyFile != "/etc/lvsd/gossip.key" {
					t.Fatalf("key %q from %s", cfg.Cluster.Key, cfg.Cluster.KeyFile)
				}
				return
			}
			p := ps[0]
			p.File = "/etc/lvsd/lvsd.toml"
			wantError(t, es, p, tc.msg)
		})
	}
}

// TestControlToken: the token file is checked as lvsd reads it at start
// (white space trimmed, at least 16 characters), at the token_file key,
// and the token itself is never printed.
func TestControlToken(t *testing.T) {
	for _, tc := range []struct {
		name, content, msg string
	}{
		{"16 characters", "0123456789abcdef\n", ""},
		{"base64 of 32 bytes", base64.StdEncoding.EncodeToString([]byte(strings.Repeat("t", 32))) + "\n", ""},
		{"15 characters", "  0123456789abcde\n\n", "the token in /etc/lvsd/token has 15 characters, lvsd needs at least 16; make one with: head -c 32 /dev/urandom | base64 > /etc/lvsd/token"},
		{"white space only", " \n\t\n", "control.token_file: /etc/lvsd/token is empty; make one with: head -c 32 /dev/urandom | base64"},
		{"empty", "", "control.token_file: /etc/lvsd/token is empty"},
		{"missing", "", "control.token_file: cannot read /etc/lvsd/token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text, ps := strip("[control]\nlisten = \"127.0.0.1:9000\"\n@@token_file = \"token\"\n")
			files := map[string]string{"/etc/lvsd/lvsd.toml": text}
			if tc.name != "missing" {
				files["/etc/lvsd/token"] = tc.content
			}
			cfg, es, _ := loadMem(t, []string{"/etc/lvsd/lvsd.toml"}, files)
			if tc.msg == "" {
				if es != nil {
					t.Fatalf("unexpected errors: %v", es)
				}
				if cfg.Control.TokenFile != "/etc/lvsd/token" {
					t.Fatalf("token file %q", cfg.Control.TokenFile)
				}
				return
			}
			if len(es) != 1 {
				t.Fatalf("want one error, got:\n%v", es)
			}
			p := ps[0]
			p.File = "/etc/lvsd/lvsd.toml"
			wantError(t, es, p, tc.msg)
			if tok := strings.TrimSpace(tc.content); tok != "" && strings.Contains(es.Error(), tok) {
				t.Errorf("the error shows the token: %v", es)
			}
		})
	}
}

// TestElectionLimitsAccepted: the limits the election takes (and the
// sorry servers backends' rules allow) load, with the values given.
func TestElectionLimitsAccepted(t *testing.T) {
	name64 := strings.Repeat("n", 64)
	cfg := mustLoad(t, `
[node]
name = "`+name64+`"
interface = "eth0"
[cluster]
bind = "198.18.0.11:7946"
insecure = true
members = ["`+name64+`", "dir-b", "w1"]
witnesses = ["w1"]
heartbeat_interval = "1ms"
dead_after = "2ms"
[[track_script]]
name = "`+name64+`"
command = ["/bin/true"]
weight = 253
[[track_script]]
name = "down"
command = ["/bin/true"]
weight = -253
[[vip_group]]
name = "`+name64+`"
addresses = ["198.18.0.100/32"]
garp_count = 1
track_interface = [{ name = "eth1", weight = -253 }, { name = "eth2", weight = 0 }]
track_script = [{ name = "`+name64+`" }, { name = "down", weight = 253 }]
track_service = [{ name = "nat0", weight = -253 }]
[[vip_group]]
name = "g"
addresses = ["198.18.0.101/32"]
garp_count = 100
[[service]]
name = "nat0"
address = "198.18.1.1"
persistent = true
forward = "nat"
sorry_server = "198.18.2.9:8080"
[[service]]
name = "nat80"
address = "198.18.1.2"
port = 80
forward = "nat"
sorry_server = "198.18.2.9:8080"
[[service]]
name = "dr"
address = "198.18.1.3"
port = 80
sorry_server = "198.18.2.9:80"
[[service]]
name = "dr-bare"
address = "198.18.1.4"
port = 80
sorry_server = "198.18.2.9"
[[service]]
name = "fwm"
fwmark = 8
persistent = true
sorry_server = "198.18.2.9"
`)
	c := cfg.Cluster
	if cfg.Node.Name != name64 || c.HeartbeatInterval != time.Millisecond || c.DeadAfter != 2*time.Millisecond || len(c.Members) != 3 {
		t.Errorf("node %q cluster %+v", cfg.Node.Name, c)
	}
	if ts := cfg.TrackScripts; ts[0].Weight != 253 || ts[1].Weight != -253 {
		t.Errorf("track script weights %d %d", ts[0].Weight, ts[1].Weight)
	}
	g := cfg.VIPGroup(name64)
	if g.GARPCount != 1 || cfg.VIPGroup("g").GARPCount != 100 ||
		g.TrackInterfaces[0].Weight != -253 || g.TrackInterfaces[1].Weight != 0 ||
		g.TrackScripts[0].Weight != 253 || g.TrackScripts[1].Weight != 253 || g.TrackServices[0].Weight != -253 {
		t.Errorf("vip group %+v", g)
	}
	for name, want := range map[string]string{
		"nat0": "198.18.2.9:8080", "nat80": "198.18.2.9:8080", "dr": "198.18.2.9:80", "dr-bare": "198.18.2.9:80", "fwm": "198.18.2.9:0",
	} {
		if got := cfg.Service(name).SorryServer.String(); got != want {
			t.Errorf("service %s: sorry server %s, want %s", name, got, want)
		}
	}
}
