package config

import (
	"encoding/base64"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults of the main sections.
const (
	DefaultStateDir          = "/var/lib/lvsd"
	DefaultResyncInterval    = 30 * time.Second
	DefaultSocket            = "/run/lvsd/lvsd.sock"
	DefaultHeartbeatInterval = 20 * time.Millisecond
	DefaultDeadAfter         = 100 * time.Millisecond
	DefaultRealtimePriority  = 10
	DefaultGARPCount         = 5
)

// Limits of the VIP election (vrrp.Spec.Validate), checked here so that
// lvsd --check refuses what lvsd would refuse at start.
const (
	maxElectionName   = 64  // node, member, vip_group and track_script names, in bytes
	maxTrackWeight    = 253 // |weight| of a tracked script, interface or service
	minHeartbeat      = time.Millisecond
	maxGARPCount      = 100
	electionNameLimit = "the election's limit is 64 bytes"
)

func (d *decoder) node(r *reader, m *mainSections) {
	if name, ok := r.str("name"); ok {
		m.nodeNameP = r.pos("name")
		if !validName(name) {
			d.e.at(r.pos("name"), "node.name: %q must be non-empty and contain no spaces or control characters", name)
		}
		m.node.Name = name
	}
	if ifname, ok := r.str("interface"); ok {
		d.checkIfName(r, "interface", ifname)
		m.node.Interface = ifname
	}
	m.node.StateDir = DefaultStateDir
	if dir, ok := r.str("state_dir"); ok {
		if !filepath.IsAbs(dir) {
			d.e.at(r.pos("state_dir"), "node.state_dir: %q must be an absolute path", dir)
		}
		m.node.StateDir = filepath.Clean(dir)
	}
	r.done()
}

func (d *decoder) ipvs(r *reader, m *mainSections) {
	m.ipvs.ExpireNodestConn = r.boolean("expire_nodest_conn", true)
	m.ipvs.ExpireQuiescentTemplate = r.boolean("expire_quiescent_template", true)
	m.ipvs.ResyncInterval = r.durationOr("resync_interval", DefaultResyncInterval)
	s := r.sub("sync")
	m.ipvs.Sync.Enabled = s.boolean("enabled", false)
	if ifname, ok := s.str("interface"); ok {
		d.checkIfName(&s, "interface", ifname)
		m.ipvs.Sync.Interface = ifname
	}
	m.syncIfP = s.tablePos()
	m.ipvs.Sync.SyncID = uint8(s.intOr("sync_id", 0, 255, 0))
	s.done()
	r.done()
}

func (d *decoder) cluster(r *reader, m *mainSections) *Cluster {
	c := &Cluster{Pos: r.tablePos(), HeartbeatInterval: DefaultHeartbeatInterval, DeadAfter: DefaultDeadAfter}
	if v, ok := r.str("bind"); ok {
		ap, err := netip.ParseAddrPort(v)
		switch {
		case err != nil:
			d.e.at(r.pos("bind"), "cluster.bind: %q is not ip:port (e.g. \"198.18.0.11:7946\")", v)
		case ap.Port() == 0:
			d.e.at(r.pos("bind"), "cluster.bind: port must not be 0")
		default:
			c.Bind = ap
		}
	} else if !r.has("bind") {
		d.e.at(c.Pos, "cluster.bind is required (ip:port for gossip and heartbeats)")
	}
	c.Advertise = c.Bind
	if v, ok := r.str("advertise"); ok && v != "" {
		ap, err := netip.ParseAddrPort(v)
		switch {
		case err != nil:
			d.e.at(r.pos("advertise"), "cluster.advertise: %q is not ip:port", v)
		case ap.Port() == 0 || ap.Addr().IsUnspecified():
			d.e.at(r.pos("advertise"), "cluster.advertise: %q must be a concrete address and port", v)
		default:
			c.Advertise = ap
		}
	} else if c.Bind.IsValid() && c.Bind.Addr().IsUnspecified() {
		d.e.at(r.pos("bind"), "cluster.advertise is required when bind is a wildcard address (%s)", c.Bind)
	}
	if peers, ok := r.elems("peers"); ok {
		seen := map[string]bool{}
		for i, v := range peers {
			p := d.src.pos(v.off)
			if v.kind != kString {
				d.e.at(p, "cluster.peers[%d]: want a \"host:port\" string, got %s", i, v.kind)
				continue
			}
			hp, err := parseHostPort(v.str)
			if err != nil {
				d.e.at(p, "cluster.peers[%d]: %q: %v", i, v.str, err)
				continue
			}
			if _, err := netip.ParseAddr(hp.Host); err != nil {
				d.e.at(p, "cluster.peers[%d]: %q: want ip:port, the election does not resolve host names", i, v.str)
				continue
			}
			if seen[hp.String()] {
				d.e.at(p, "cluster.peers[%d]: duplicate peer %s", i, hp)
				continue
			}
			seen[hp.String()] = true
			c.Peers = append(c.Peers, hp)
		}
	}
	c.Insecure = r.boolean("insecure", false)
	if kf, ok := r.str("key_file"); ok && kf != "" {
		if c.Insecure {
			d.e.at(r.pos("key_file"), "cluster.key_file and insecure = true conflict: drop one")
		}
		c.KeyFile = d.resolve(kf)
	} else if !c.Insecure {
		d.e.at(c.Pos, "cluster.key_file is required (32-byte gossip key, raw or base64); insecure = true is for tests only")
	}
	c.Members = d.names(r, "cluster", "members")
	c.Witnesses = d.names(r, "cluster", "witnesses")
	for _, w := range c.Witnesses {
		if !slices.Contains(c.Members, w) {
			d.e.at(r.pos("witnesses"), "cluster.witnesses: %q is not in cluster.members", w)
		}
	}
	if len(c.Witnesses) > 0 && len(c.Members) < 3 {
		d.e.at(r.pos("witnesses"), "cluster.witnesses need at least 3 cluster.members for a majority (members has %d)", len(c.Members))
	}
	c.HeartbeatInterval = r.durationOr("heartbeat_interval", DefaultHeartbeatInterval)
	c.DeadAfter = r.durationOr("dead_after", DefaultDeadAfter)
	switch {
	case c.HeartbeatInterval < minHeartbeat:
		d.e.at(r.pos("heartbeat_interval"), "cluster.heartbeat_interval (%s) must be at least %s", c.HeartbeatInterval, minHeartbeat)
	case c.DeadAfter < 2*c.HeartbeatInterval:
		p := r.pos("dead_after")
		if !r.has("dead_after") {
			p = r.pos("heartbeat_interval")
		}
		d.e.at(p, "cluster.dead_after (%s) must be at least twice heartbeat_interval (%s)", c.DeadAfter, c.HeartbeatInterval)
	}
	c.RealtimePriority = int(r.intOr("realtime_priority", 0, 99, DefaultRealtimePriority))
	m.clusterAt = positions{{"key_file", r.pos("key_file")}, {"members", r.pos("members")}}
	r.done()
	return c
}

// names reads a list of unique, valid names.
func (d *decoder) names(r *reader, section, key string) []string {
	vals, ok := r.elems(key)
	if !ok {
		return nil
	}
	var out []string
	for i, v := range vals {
		p := d.src.pos(v.off)
		switch {
		case v.kind != kString:
			d.e.at(p, "%s.%s[%d]: want a string, got %s", section, key, i, v.kind)
		case !validName(v.str):
			d.e.at(p, "%s.%s[%d]: %q is not a valid name", section, key, i, v.str)
		case len(v.str) > maxElectionName:
			d.e.at(p, "%s.%s[%d]: %q is %d bytes long; %s", section, key, i, v.str, len(v.str), electionNameLimit)
		case slices.Contains(out, v.str):
			d.e.at(p, "%s.%s[%d]: duplicate %q", section, key, i, v.str)
		default:
			out = append(out, v.str)
		}
	}
	return out
}

func (d *decoder) control(r *reader, m *mainSections) {
	m.control.Socket = DefaultSocket
	if s, ok := r.str("socket"); ok {
		if !filepath.IsAbs(s) {
			d.e.at(r.pos("socket"), "control.socket: %q must be an absolute path", s)
		}
		m.control.Socket = filepath.Clean(s)
	}
	if v, ok := r.str("listen"); ok && v != "" {
		m.control.Listen = d.listenAddr(r, "control", v)
	}
	if tf, ok := r.str("token_file"); ok && tf != "" {
		m.control.TokenFile = d.resolve(tf)
		m.tokenP = r.pos("token_file")
	}
	if m.control.Listen.IsValid() && m.control.TokenFile == "" {
		d.e.at(r.pos("listen"), "control.token_file is required when control.listen is set (the TCP API needs a token)")
	}
	r.done()
}

func (d *decoder) metrics(r *reader, m *mainSections) {
	if v, ok := r.str("listen"); ok && v != "" {
		m.metrics.Listen = d.listenAddr(r, "metrics", v)
	}
	m.metrics.PerBackend = r.boolean("per_backend", true)
	r.done()
}

func (d *decoder) listenAddr(r *reader, section, v string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(v)
	if err != nil || ap.Port() == 0 {
		d.e.at(r.pos("listen"), "%s.listen: %q is not ip:port with a non-zero port (e.g. \"127.0.0.1:9120\")", section, v)
		return netip.AddrPort{}
	}
	return ap
}

func (d *decoder) trackScript(r *reader) *TrackScript {
	ts := &TrackScript{Pos: r.tablePos(), Rise: 1, Fall: 1}
	ts.Name = d.requiredName(r, "track_script")
	d.electionName(r, ts.Name)
	ts.Command = d.command(r, "command", true)
	ts.Interval, ts.Timeout = d.intervalTimeout(r, time.Second)
	ts.Weight = int(r.intOr("weight", -maxTrackWeight, maxTrackWeight, 0))
	ts.Rise = int(r.intOr("rise", 1, 1000, 1))
	ts.Fall = int(r.intOr("fall", 1, 1000, 1))
	r.done()
	if ts.Name == "" {
		return nil
	}
	return ts
}

// intervalTimeout reads interval and timeout; timeout defaults to half the
// interval and must stay below it, so one check ends before the next starts.
func (d *decoder) intervalTimeout(r *reader, defInterval time.Duration) (time.Duration, time.Duration) {
	interval := r.durationOr("interval", defInterval)
	if interval == 0 {
		d.e.at(r.pos("interval"), "%s: must be above 0", r.name("interval"))
		interval = defInterval
	}
	timeout, ok := r.duration("timeout")
	if !ok {
		return interval, interval / 2
	}
	switch {
	case timeout == 0:
		d.e.at(r.pos("timeout"), "%s: must be above 0", r.name("timeout"))
	case timeout >= interval:
		d.e.at(r.pos("timeout"), "%s (%s) must be below %s (%s)", r.name("timeout"), timeout, r.name("interval"), interval)
	}
	return interval, timeout
}

// command reads an argv list.
func (d *decoder) command(r *reader, key string, required bool) []string {
	cmd, ok := r.strs(key)
	switch {
	case !ok && required && !r.has(key):
		d.e.at(r.tablePos(), "%s is required (argv list, e.g. [\"/usr/local/bin/check\", \"--quick\"])", r.name(key))
	case ok && len(cmd) == 0 && required:
		d.e.at(r.pos(key), "%s: must not be empty", r.name(key))
	case ok && len(cmd) > 0 && cmd[0] == "":
		d.e.at(r.pos(key), "%s: program (first element) must not be empty", r.name(key))
	}
	return cmd
}

func (d *decoder) requiredName(r *reader, what string) string {
	name, ok := r.str("name")
	switch {
	case !ok && !r.has("name"):
		d.e.at(r.tablePos(), "%s needs a name", what)
	case ok && !validName(name):
		d.e.at(r.pos("name"), "%s.name: %q must be non-empty and contain no spaces or control characters", what, name)
	}
	return name
}

// electionName reports a valid name the election cannot take (too long).
func (d *decoder) electionName(r *reader, name string) {
	if validName(name) && len(name) > maxElectionName {
		d.e.at(r.pos("name"), "%s: %q is %d bytes long; %s", r.name("name"), name, len(name), electionNameLimit)
	}
}

func (d *decoder) vipGroup(r *reader) *VIPGroup {
	g := &VIPGroup{Pos: r.tablePos()}
	g.Name = d.requiredName(r, "vip_group")
	d.electionName(r, g.Name)
	if ifname, ok := r.str("interface"); ok {
		d.checkIfName(r, "interface", ifname)
		g.Interface = ifname
	}
	if vals, ok := r.elems("addresses"); ok {
		if len(vals) == 0 {
			d.e.at(r.pos("addresses"), "vip_group.addresses: must not be empty (e.g. [\"198.18.0.100/32\"])")
		}
		seen := map[netip.Addr]bool{}
		for i, v := range vals {
			p := d.src.pos(v.off)
			if v.kind != kString {
				d.e.at(p, "vip_group.addresses[%d]: want a string like \"198.18.0.100/32\", got %s", i, v.kind)
				continue
			}
			pfx, err := netip.ParsePrefix(v.str)
			if err != nil {
				if a, aerr := netip.ParseAddr(v.str); aerr == nil {
					d.e.at(p, "vip_group.addresses[%d]: %q needs a prefix length, e.g. \"%s/%d\"", i, v.str, a, a.BitLen())
				} else {
					d.e.at(p, "vip_group.addresses[%d]: %q is not an address with prefix: %v", i, v.str, err)
				}
				continue
			}
			if pfx.Addr().IsUnspecified() || pfx.Addr().IsMulticast() {
				d.e.at(p, "vip_group.addresses[%d]: %s cannot be a VIP", i, pfx)
				continue
			}
			if seen[pfx.Addr()] {
				d.e.at(p, "vip_group.addresses[%d]: duplicate address %s", i, pfx.Addr())
				continue
			}
			seen[pfx.Addr()] = true
			g.Addresses = append(g.Addresses, pfx)
			g.at = append(g.at, keyPos{"addresses[" + strconv.Itoa(len(g.Addresses)-1) + "]", p})
		}
	}
	if len(g.Addresses) == 0 && !r.has("addresses") {
		d.e.at(g.Pos, "vip_group needs addresses (e.g. [\"198.18.0.100/32\"])")
	}
	g.Priority = int(r.intOr("priority", 1, 254, 100))
	g.Preempt = r.boolean("preempt", true)
	g.PreemptDelay = r.durationOr("preempt_delay", 0)
	if !g.Preempt && g.PreemptDelay > 0 {
		d.e.at(r.pos("preempt_delay"), "vip_group.preempt_delay has no effect with preempt = false")
	}
	g.GARPCount = int(r.intOr("garp_count", 1, maxGARPCount, DefaultGARPCount))
	g.GARPInterval = r.durationOr("garp_interval", 20*time.Millisecond)
	if g.GARPInterval == 0 {
		d.e.at(r.pos("garp_interval"), "vip_group.garp_interval must be above 0 (garp_refresh = \"0s\" turns the periodic refresh off)")
		g.GARPInterval = 20 * time.Millisecond
	}
	g.GARPRefresh = r.durationOr("garp_refresh", 10*time.Second)
	// The election lowers the priority by a failed interface's or service's
	// weight (0: fault); a script may also raise it while it succeeds.
	g.TrackInterfaces = d.trackRefs(r, "track_interface", true, 0)
	g.TrackScripts = d.trackRefs(r, "track_script", false, maxTrackWeight)
	g.TrackServices = d.trackRefs(r, "track_service", true, 0)
	g.NotifyMaster = d.command(r, "notify_master", false)
	g.NotifyBackup = d.command(r, "notify_backup", false)
	g.NotifyFault = d.command(r, "notify_fault", false)
	g.NotifyStop = d.command(r, "notify_stop", false)
	g.NotifyTimeout = r.durationOr("notify_timeout", 5*time.Second)
	if g.NotifyTimeout == 0 {
		d.e.at(r.pos("notify_timeout"), "vip_group.notify_timeout must be above 0")
	}
	g.at = append(g.at, keyPos{"name", r.pos("name")}, keyPos{"interface", r.pos("interface")})
	r.done()
	if g.Name == "" {
		return nil
	}
	return g
}

// noWeight marks a track_script reference without its own weight; assembly
// fills in the script's weight.
const noWeight = math.MinInt

func (d *decoder) trackRefs(r *reader, key string, zeroDefault bool, maxWeight int64) []TrackRef {
	var refs []TrackRef
	for _, v := range r.tables(key) {
		tr := r.at(key, v)
		ref := TrackRef{Pos: tr.tablePos(), Weight: noWeight}
		if zeroDefault {
			ref.Weight = 0
		}
		name, ok := tr.str("name")
		if !ok && !tr.has("name") {
			d.e.at(ref.Pos, "%s entry needs a name", r.name(key))
		}
		if key == "track_interface" && ok {
			d.checkIfName(&tr, "name", name)
		} else if ok && name == "" {
			d.e.at(tr.pos("name"), "%s: must not be empty", tr.name("name"))
		}
		ref.Name = name
		if w, ok := tr.integer("weight", -maxTrackWeight, maxWeight); ok {
			ref.Weight = int(w)
		}
		tr.done()
		if name != "" {
			refs = append(refs, ref)
		}
	}
	return refs
}

func (d *decoder) checkIfName(r *reader, key, name string) {
	if !validIfName(name) {
		d.e.at(r.pos(key), "%s: %q is not a valid interface name (1..15 characters, no '/', ':' or spaces)", r.name(key), name)
	}
}

// resolve makes a path from the config relative to the file it is in.
func (d *decoder) resolve(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(d.dir, p)
}

func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func validIfName(s string) bool {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n\x00")
}

func parseHostPort(s string) (HostPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return HostPort{}, errString("not host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return HostPort{}, errString("port must be 1..65535")
	}
	if _, aerr := netip.ParseAddr(host); aerr != nil && !validHostname(host) {
		return HostPort{}, errString("host is neither an IP address nor a DNS name")
	}
	return HostPort{Host: host, Port: uint16(n)}, nil
}

func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

type errString string

func (e errString) Error() string { return string(e) }

// readKey decodes a gossip key file: 32 raw bytes or base64 of 32 bytes.
func decodeKey(b []byte) ([]byte, bool) {
	if len(b) == 32 {
		return b, true
	}
	s := strings.TrimSpace(string(b))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil && len(k) == 32 {
			return k, true
		}
	}
	return nil, false
}
