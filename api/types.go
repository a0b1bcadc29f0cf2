// Package api is lvsd's control API: HTTP/JSON on a Unix socket (root only),
// optionally on TCP with a bearer token. The server depends on a Controller
// that the daemon implements; Client is what lvsctl uses.
package api

import "time"

// Status is the answer of GET /v1/status.
type Status struct {
	Node     string          `json:"node"`
	Mode     string          `json:"mode"` // standalone|cluster|witness
	Config   string          `json:"config"`
	Started  time.Time       `json:"started"`
	Members  []Member        `json:"members,omitempty"`
	Groups   []Group         `json:"groups,omitempty"`
	Services []Service       `json:"services,omitempty"`
	Sync     *ConnSyncStatus `json:"conn_sync,omitempty"`
}

// Member is one cluster member as this node sees it.
type Member struct {
	Name     string    `json:"name"`
	Address  string    `json:"address,omitempty"`
	Alive    bool      `json:"alive"`
	Witness  bool      `json:"witness,omitempty"`
	Self     bool      `json:"self,omitempty"`
	LastSeen time.Time `json:"last_seen,omitzero"`
}

// Group is one VIP group.
type Group struct {
	Name           string    `json:"name"`
	State          string    `json:"state"` // master|backup|fault|stopped
	Owner          string    `json:"owner,omitempty"`
	Priority       int       `json:"priority"`
	BasePriority   int       `json:"base_priority"`
	Addresses      []string  `json:"addresses"`
	Interface      string    `json:"interface"`
	Reason         string    `json:"reason,omitempty"`
	LastTransition time.Time `json:"last_transition,omitzero"`
	// Override is an operator's standing demote or promote on this
	// director (kept across restarts until `lvsctl clear`).
	Override      string    `json:"override,omitempty"`
	OverrideSince time.Time `json:"override_since,omitzero"`
}

// Service is one virtual service with its backends.
type Service struct {
	Name        string    `json:"name"`
	Key         string    `json:"key"` // e.g. tcp:198.18.1.63:0 or fwm:8/ipv4
	Group       string    `json:"group,omitempty"`
	Scheduler   string    `json:"scheduler"`
	Persistent  bool      `json:"persistent"`
	Timeout     string    `json:"persistence_timeout,omitempty"`
	Granularity int       `json:"persistence_bits,omitempty"`
	OnePacket   bool      `json:"one_packet,omitempty"`
	QuorumUp    bool      `json:"quorum_up"`
	InKernel    bool      `json:"in_kernel"`
	Backends    []Backend `json:"backends"`
}

// Backend is one real server of a service.
type Backend struct {
	Address       string    `json:"address"` // addr:port
	Forward       string    `json:"forward"`
	ConfigWeight  int       `json:"config_weight"`
	Weight        int       `json:"weight"`    // weight in the kernel; -1 when absent
	Health        string    `json:"health"`    // up|down|unchecked
	Admin         string    `json:"admin"`     // "", drained, disabled
	Origin        string    `json:"origin"`    // config|runtime|sorry
	InKernel      bool      `json:"in_kernel"` // present in IPVS
	ActiveConns   int       `json:"active_conns"`
	InactiveConns int       `json:"inactive_conns"`
	Reason        string    `json:"reason,omitempty"` // of the last health transition
	Since         time.Time `json:"since,omitzero"`
}

// ConnSyncStatus reports the kernel connection sync daemons.
type ConnSyncStatus struct {
	Master    bool   `json:"master"`
	Backup    bool   `json:"backup"`
	Interface string `json:"interface"`
	SyncID    int    `json:"sync_id"`
}

// Event is one transition in lvsd's history.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // health|election|operator|reload|reconcile
	Subject string    `json:"subject"`
	From    string    `json:"from,omitempty"`
	To      string    `json:"to,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

// BackendRequest is the body of POST /v1/backend/{action}.
type BackendRequest struct {
	Service string `json:"service"`
	Backend string `json:"backend"`          // ADDRESS[:PORT]
	Weight  *int   `json:"weight,omitempty"` // add only
}

// GroupRequest is the body of POST /v1/group/{action}.
type GroupRequest struct {
	Group string `json:"group"`
}

// CheckResult answers a reload or a config check.
type CheckResult struct {
	OK     bool     `json:"ok"`
	Config string   `json:"config"`
	Errors []string `json:"errors,omitempty"`
	// Changes summarises what a reload changed.
	Changes []string `json:"changes,omitempty"`
}

// ErrorBody is every non-2xx answer.
type ErrorBody struct {
	Error string `json:"error"`
	Hint  string `json:"hint,omitempty"`
}

// Conn is one entry of the kernel's IPVS connection table.
type Conn struct {
	Service  string  `json:"service,omitempty"` // lvsd's service, "" for others
	Protocol string  `json:"protocol"`
	Client   string  `json:"client"`
	Virtual  string  `json:"virtual"`
	Backend  string  `json:"backend"`
	State    string  `json:"state"`
	Expires  float64 `json:"expires_seconds"`
	// Template marks a persistence template: the entry that sends every new
	// connection of Client to Backend until it expires.
	Template bool `json:"template,omitempty"`
}
