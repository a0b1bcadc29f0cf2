package vrrp

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// Message kinds carried in memberlist user messages.
const (
	msgHeartbeat byte = 'H'
	msgUser      byte = 'U'
)

const (
	// heartbeatVersion 2 added the demotion stamp. A node not yet upgraded
	// drops version 2 heartbeats (and would count the sender dead), so a
	// heartbeat is sent as version 1 unless a group is demoted and every
	// live peer has said it reads version 2 (hbReadsV2, a header flag that
	// version 1 decoders ignore).
	heartbeatVersion = 2
	maxDigest        = 512
	// maxHeartbeat keeps a heartbeat inside one UDP packet after memberlist's
	// encryption and framing overhead (its UDP buffer is 1400 bytes).
	maxHeartbeat = 1200

	hbReleasing = 1 << 0 // sender is stopping: treat all its claims as gone
	hbReadsV2   = 1 << 1 // sender reads version 2 heartbeats

	gvCandidate = 1 << 0
	gvFault     = 1 << 1
	gvClaim     = 1 << 2
	gvWant      = 1 << 3
	gvYield     = 1 << 4 // followed by the demotion time, u64 Unix ns (version 2)
)

// Heartbeat is the fast liveness message a node sends to every configured
// peer each heartbeat_interval, and at once whenever its views change.
type Heartbeat struct {
	Name      string
	Boot      uint64 // random per process start: a restarted peer resets Seq
	Seq       uint64
	Releasing bool // graceful stop: claims nothing, take over at once
	// ReadsV2 (decoded) says the sender reads version 2; every heartbeat
	// this build sends says so.
	ReadsV2 bool
	// V1Only (encoding) leaves the demotion stamps out and sends version 1,
	// for a peer that reads nothing newer.
	V1Only bool
	Groups map[string]GroupView
	Digest []byte // opaque, for the daemon's anti-entropy
}

// MarshalBinary encodes h compactly:
// kind 'H', version, flags, boot u64, seq u64, name, n groups, per group
// (name, flags, priority, vote[, demoted-since u64]), digest. Strings and the digest are
// uvarint-length-prefixed; groups are sorted by name so equal heartbeats
// encode equally.
func (h *Heartbeat) MarshalBinary() ([]byte, error) {
	if err := checkName(h.Name); err != nil {
		return nil, fmt.Errorf("heartbeat name: %w", err)
	}
	if len(h.Groups) > maxGroups {
		return nil, fmt.Errorf("heartbeat: %d groups, at most %d", len(h.Groups), maxGroups)
	}
	if len(h.Digest) > maxDigest {
		return nil, fmt.Errorf("heartbeat digest: %d bytes, at most %d", len(h.Digest), maxDigest)
	}
	version := byte(1)
	for _, v := range h.Groups {
		if v.Yield && !h.V1Only {
			version = heartbeatVersion
		}
	}
	b := make([]byte, 0, 64+len(h.Digest)+len(h.Groups)*24)
	b = append(b, msgHeartbeat, version)
	flags := byte(hbReadsV2)
	if h.Releasing {
		flags |= hbReleasing
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint64(b, h.Boot)
	b = binary.BigEndian.AppendUint64(b, h.Seq)
	b = appendString(b, h.Name)
	names := make([]string, 0, len(h.Groups))
	for n := range h.Groups {
		names = append(names, n)
	}
	sort.Strings(names)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, n := range names {
		if err := checkName(n); err != nil {
			return nil, fmt.Errorf("heartbeat group name: %w", err)
		}
		v := h.Groups[n]
		if len(v.Vote) > maxNameLen {
			return nil, fmt.Errorf("heartbeat group %q: vote name longer than %d bytes", n, maxNameLen)
		}
		var f byte
		if v.Candidate {
			f |= gvCandidate
		}
		if v.Fault {
			f |= gvFault
		}
		if v.Claim {
			f |= gvClaim
		}
		if v.Want {
			f |= gvWant
		}
		stamp := v.Yield && version >= 2
		if stamp {
			f |= gvYield
		}
		b = appendString(b, n)
		b = append(b, f, v.Priority)
		b = appendString(b, v.Vote)
		if stamp {
			b = binary.BigEndian.AppendUint64(b, uint64(v.YieldSince))
		}
	}
	b = binary.AppendUvarint(b, uint64(len(h.Digest)))
	b = append(b, h.Digest...)
	if len(b) > maxHeartbeat {
		return nil, fmt.Errorf("heartbeat: %d bytes encoded, at most %d", len(b), maxHeartbeat)
	}
	return b, nil
}

// UnmarshalBinary decodes and checks a heartbeat; any malformed input is an
// error naming the field, never a panic.
func (h *Heartbeat) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	if k := r.byte("kind"); r.err == nil && k != msgHeartbeat {
		return fmt.Errorf("heartbeat: kind %#x, want %#x", k, msgHeartbeat)
	}
	version := r.byte("version")
	if r.err == nil && (version < 1 || version > heartbeatVersion) {
		return fmt.Errorf("heartbeat: version %d unsupported (want 1 to %d)", version, heartbeatVersion)
	}
	flags := r.byte("flags")
	out := Heartbeat{Releasing: flags&hbReleasing != 0, ReadsV2: flags&hbReadsV2 != 0}
	out.Boot = r.u64("boot")
	out.Seq = r.u64("seq")
	out.Name = r.string("name", maxNameLen)
	n := r.uvarint("group count")
	if r.err == nil && n > maxGroups {
		return fmt.Errorf("heartbeat: group count %d exceeds %d", n, maxGroups)
	}
	if n > 0 {
		out.Groups = make(map[string]GroupView, n)
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		name := r.string("group name", maxNameLen)
		f := r.byte("group flags")
		prio := r.byte("group priority")
		vote := r.string("group vote", maxNameLen)
		yield := version >= 2 && f&gvYield != 0
		var since int64
		if yield {
			since = int64(r.u64("group demoted-since"))
		}
		if r.err != nil {
			break
		}
		if err := checkName(name); err != nil {
			return fmt.Errorf("heartbeat group %d name: %w", i, err)
		}
		if _, dup := out.Groups[name]; dup {
			return fmt.Errorf("heartbeat: group %q repeated", name)
		}
		out.Groups[name] = GroupView{Candidate: f&gvCandidate != 0, Fault: f&gvFault != 0,
			Claim: f&gvClaim != 0, Want: f&gvWant != 0, Priority: prio, Vote: vote,
			Yield: yield, YieldSince: since}
	}
	if dl := r.uvarint("digest length"); r.err == nil {
		if dl > maxDigest {
			return fmt.Errorf("heartbeat: digest length %d exceeds %d", dl, maxDigest)
		}
		if d := r.take(int(dl), "digest"); dl > 0 {
			out.Digest = append([]byte(nil), d...)
		}
	}
	if r.err != nil {
		return fmt.Errorf("heartbeat: %w", r.err)
	}
	if len(r.b) != 0 {
		return fmt.Errorf("heartbeat: %d trailing bytes", len(r.b))
	}
	if err := checkName(out.Name); err != nil {
		return fmt.Errorf("heartbeat name: %w", err)
	}
	*h = out
	return nil
}

// seqOffset is where Seq sits in an encoded heartbeat (after kind, version,
// flags and boot), so the send loop can stamp it without re-encoding.
const seqOffset = 3 + 8

func setSeq(b []byte, seq uint64) { binary.BigEndian.PutUint64(b[seqOffset:], seq) }

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// reader consumes a buffer and remembers the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.err = fmt.Errorf("truncated in %s", what)
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte(what string) byte {
	if b := r.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u64(what string) uint64 {
	if b := r.take(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *reader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("bad varint in %s", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string(what string, max int) string {
	n := r.uvarint(what + " length")
	if r.err == nil && n > uint64(max) {
		r.err = fmt.Errorf("%s longer than %d bytes", what, max)
	}
	if r.err != nil {
		return ""
	}
	return string(r.take(int(n), what))
}
