package vrrp

import (
	"fmt"
	"sort"
	"time"
)

// Role is a node's part in one VIP group.
type Role uint8

const (
	RoleBackup Role = iota
	RoleMaster
	RoleFault
	RoleStopped
)

func (r Role) String() string {
	switch r {
	case RoleBackup:
		return "backup"
	case RoleMaster:
		return "master"
	case RoleFault:
		return "fault"
	case RoleStopped:
		return "stopped"
	}
	return fmt.Sprintf("role(%d)", r)
}

// GroupView is what one node says about one group in its heartbeat.
type GroupView struct {
	Candidate bool  // holds the group (false for a witness, which only votes)
	Priority  uint8 // effective priority
	Fault     bool
	Claim     bool   // owns the addresses now
	Want      bool   // asks the current owner to hand over (preemption)
	Vote      string // the node it accepts as owner ("" none)
	// Yield reports an operator's demotion; YieldSince (Unix ns) orders two
	// demoted nodes, so the one demoted last gives way to the other.
	Yield      bool
	YieldSince int64
}

// LocalGroup is this node's own view of a group it holds.
type LocalGroup struct {
	Name         string
	Priority     uint8 // effective priority (tracking and overrides applied)
	Fault        bool
	FaultReason  string
	Claiming     bool // this node holds the addresses now
	Preempt      bool
	PreemptDelay time.Duration
	// Force asks for the group regardless of preemption settings (Promote).
	Force bool
	// Yield hands the group to any other eligible node (Demote): one not
	// demoted, else one demoted before YieldSince.
	Yield      bool
	YieldSince time.Time
}

// ElectionInput is everything Elect looks at. Elect reads no clock and does
// no I/O, so every node fed the same views computes the same owner.
type ElectionInput struct {
	Self      string
	Members   []string // configured members, self included; may be empty
	Witnesses []string // with witnesses, quorum and votes are required
	// Alive holds the peers whose last heartbeat is younger than dead_after,
	// keyed by node name, with their per-group views.
	Alive    map[string]map[string]GroupView
	Groups   []LocalGroup
	Starting bool // still listening for peers after start: claim nothing, vote nothing
	Now      time.Time
}

// Decision is Elect's verdict for one local group.
type Decision struct {
	Group  string
	Role   Role
	Want   bool
	Owner  string // who this node believes owns the group, "" none
	Reason string
	// Conflict names other live claimants while this node keeps the group
	// (a healed partition): the owner must re-announce.
	Conflict []string
	// Successor is the live, eligible peer that would own the group if this
	// node gave it up ("" none): a failover with none would change nothing.
	Successor string
}

// ElectionState is the little memory Elect needs between calls.
type ElectionState struct {
	pendingSince map[string]time.Time // group -> when preemption became possible
}

// ElectionResult holds the decisions for local groups, the votes for every
// group known (local or reported by peers), and the quorum view.
type ElectionResult struct {
	Decisions []Decision
	Votes     map[string]string
	Quorum    bool
	Visible   int // members visible, self included
	Needed    int // majority of members, 0 when no quorum is required
	// NextWake is the earliest time a pending preempt delay expires (zero: none).
	NextWake time.Time
}

type candidate struct {
	name     string
	priority uint8
	eligible bool
	claim    bool
	want     bool
	yield    bool
	yieldAt  int64
}

// outranks orders candidates: eligible first, then not demoted, then (both
// demoted) the earlier demotion, then higher priority, then the lexically
// smaller name, so every node picks the same winner. Ordering demotions by
// time keeps a pair stable when an operator demotes one director and later
// the other without clearing the first: the VIP goes back to the first
// instead of bouncing between two nodes that each hand it over.
func outranks(a, b candidate) bool {
	if a.eligible != b.eligible {
		return a.eligible
	}
	if a.yield != b.yield {
		return !a.yield
	}
	if a.yield && a.yieldAt != b.yieldAt {
		return a.yieldAt < b.yieldAt
	}
	if a.priority != b.priority {
		return a.priority > b.priority
	}
	return a.name < b.name
}

func best(cs []candidate, keep func(candidate) bool) (candidate, bool) {
	var out candidate
	found := false
	for _, c := range cs {
		if !keep(c) {
			continue
		}
		if !found || outranks(c, out) {
			out, found = c, true
		}
	}
	return out, found
}

// Elect computes every local group's role. Rules (docs/DESIGN.md "Election"):
//   - the owner is the alive, non-fault member with the highest effective
//     priority, ties broken by the smaller name;
//   - a node never claims while a live peer claims; it asks (Want) and the
//     claimant hands over, so a connected cluster has at most one owner;
//   - without preemption the live claimant stays; preempt_delay delays Want;
//   - when two claims are seen (a healed partition) the lower one releases at
//     once and the winner keeps the group and re-announces;
//   - with witnesses, a node needs a majority of members visible and a
//     majority of votes to claim or keep a group.
func Elect(in ElectionInput, st ElectionState) (ElectionResult, ElectionState) {
	res := ElectionResult{Votes: map[string]string{}, Visible: 1, Quorum: true}
	next := ElectionState{pendingSince: map[string]time.Time{}}

	isMember := func(string) bool { return true }
	if len(in.Members) > 0 {
		set := map[string]bool{}
		for _, m := range in.Members {
			set[m] = true
		}
		isMember = func(n string) bool { return set[n] }
	}
	peers := make([]string, 0, len(in.Alive))
	for name := range in.Alive {
		if name != in.Self && isMember(name) {
			peers = append(peers, name)
		}
	}
	sort.Strings(peers)
	res.Visible += len(peers)
	needQuorum := len(in.Witnesses) > 0 && len(in.Members) > 0
	if needQuorum {
		res.Needed = len(in.Members)/2 + 1
		res.Quorum = res.Visible >= res.Needed
	}

	local := map[string]LocalGroup{}
	for _, g := range in.Groups {
		local[g.Name] = g
	}
	// Every group name known here: our own and those peers report.
	names := map[string]bool{}
	for n := range local {
		names[n] = true
	}
	for _, p := range peers {
		for g := range in.Alive[p] {
			names[g] = true
		}
	}

	candidates := func(group string) []candidate {
		var cs []candidate
		if g, ok := local[group]; ok {
			c := candidate{name: in.Self, priority: g.Priority,
				eligible: !g.Fault && g.Priority > 0 && !in.Starting, claim: g.Claiming, yield: g.Yield}
			if g.Yield {
				c.yieldAt = g.YieldSince.UnixNano()
			}
			cs = append(cs, c)
		}
		for _, p := range peers {
			v, ok := in.Alive[p][group]
			if !ok || !v.Candidate {
				continue
			}
			cs = append(cs, candidate{name: p, priority: v.Priority,
				eligible: !v.Fault && v.Priority > 0, claim: v.Claim, want: v.Want,
				yield: v.Yield, yieldAt: v.YieldSince})
		}
		return cs
	}
	eligible := func(c candidate) bool { return c.eligible }
	eligibleClaimant := func(c candidate) bool { return c.eligible && c.claim }

	// Votes: the best live eligible claimant, else the best eligible node.
	for g := range names {
		if in.Starting || !res.Quorum {
			res.Votes[g] = ""
			continue
		}
		cs := candidates(g)
		if c, ok := best(cs, eligibleClaimant); ok {
			res.Votes[g] = c.name
		} else if c, ok := best(cs, eligible); ok {
			res.Votes[g] = c.name
		} else {
			res.Votes[g] = ""
		}
	}
	votesFor := func(group, name string) int {
		n := 0
		if res.Votes[group] == name {
			n++
		}
		for _, p := range peers {
			if v, ok := in.Alive[p][group]; ok && v.Vote == name {
				n++
			}
		}
		return n
	}
	hasMajority := func(group string) bool {
		return !needQuorum || votesFor(group, in.Self) >= res.Needed
	}

	for _, g := range in.Groups {
		d := Decision{Group: g.Name, Role: RoleBackup}
		cs := candidates(g.Name)
		self := cs[0]
		var others []candidate // live peers claiming the group, whatever their state
		for _, c := range cs[1:] {
			if c.claim {
				others = append(others, c)
			}
		}
		top, haveTop := best(cs, eligible)
		if s, ok := best(cs[1:], eligible); ok {
			d.Successor = s.name
		}
		switch {
		case g.Fault:
			d.Role = RoleFault
			d.Reason = "fault: " + g.FaultReason
			if g.FaultReason == "" {
				d.Reason = "fault"
			}
			if len(others) > 0 {
				d.Owner = others[0].name
			}
		case g.Priority == 0:
			d.Role = RoleFault
			d.Reason = "effective priority 0"
		case in.Starting:
			d.Reason = "starting: listening for peers"
			if len(others) > 0 {
				d.Owner = others[0].name
			}
		case !res.Quorum:
			d.Reason = fmt.Sprintf("no quorum: %d of %d members visible, need %d", res.Visible, len(in.Members), res.Needed)
		case g.Claiming && len(others) > 0:
			// Two claims: the lower one releases at once.
			w, _ := best(append([]candidate{self}, others...), func(candidate) bool { return true })
			if w.name == in.Self && hasMajority(g.Name) {
				d.Role, d.Owner = RoleMaster, in.Self
				for _, o := range others {
					d.Conflict = append(d.Conflict, o.name)
				}
				d.Reason = fmt.Sprintf("conflicting claim by %v: we outrank it, keeping and re-announcing", d.Conflict)
			} else if w.name == in.Self {
				d.Reason = fmt.Sprintf("conflicting claim by %s and no majority vote: releasing", others[0].name)
			} else {
				d.Owner = w.name
				d.Reason = fmt.Sprintf("conflicting claim: %s outranks us, releasing", w.name)
			}
		case g.Claiming:
			if haveTop && top.name != in.Self && g.Yield {
				d.Owner = top.name
				d.Reason = "demoted: handing over to " + top.name
			} else if haveTop && top.name != in.Self && top.want {
				d.Owner = top.name
				d.Reason = fmt.Sprintf("handing over to %s (priority %d > %d)", top.name, top.priority, self.priority)
			} else if !hasMajority(g.Name) {
				d.Reason = fmt.Sprintf("lost the majority vote (%d of %d needed)", votesFor(g.Name, in.Self), res.Needed)
			} else {
				d.Role, d.Owner = RoleMaster, in.Self
				d.Reason = "owner"
			}
		case len(others) > 0:
			owner, _ := best(others, func(candidate) bool { return true })
			d.Owner = owner.name
			d.Reason = "owned by " + owner.name
			if haveTop && top.name == in.Self && (g.Force || (g.Preempt && outranks(self, owner))) {
				since, ok := st.pendingSince[g.Name]
				if !ok {
					since = in.Now
				}
				next.pendingSince[g.Name] = since
				due := since.Add(g.PreemptDelay)
				if g.Force || !in.Now.Before(due) {
					d.Want = true
					d.Reason = fmt.Sprintf("preempting %s: waiting for it to release", owner.name)
				} else {
					d.Reason = fmt.Sprintf("owned by %s: preempt delay until %s", owner.name, due.Format(time.RFC3339Nano))
					if res.NextWake.IsZero() || due.Before(res.NextWake) {
						res.NextWake = due
					}
				}
			}
		case !haveTop:
			d.Reason = "no eligible node"
		case top.name != in.Self:
			d.Owner = top.name
			d.Reason = fmt.Sprintf("%s has precedence (priority %d vs our %d)", top.name, top.priority, self.priority)
		case !hasMajority(g.Name):
			d.Reason = fmt.Sprintf("waiting for a majority vote (%d of %d needed)", votesFor(g.Name, in.Self), res.Needed)
		default:
			d.Role, d.Owner = RoleMaster, in.Self
			d.Reason = "no live owner: taking over"
			for _, c := range cs[1:] {
				if c.yield {
					d.Reason = "taking over: " + c.name + " is demoted"
					break
				}
			}
		}
		res.Decisions = append(res.Decisions, d)
	}
	return res, next
}
