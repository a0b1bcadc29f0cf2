// Package ctl is lvsctl, the operator CLI for lvsd: it talks to the control
// API of the lvsd on this host (or one given by --url) and prints what it
// answered.
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lvsd/lvsd/api"
)

const usage = `usage: lvsctl [--socket PATH | --url URL --token-file FILE] [--json] COMMAND

Commands:
  status                                   members, VIP groups and services (ipvsadm -Ln style)
  events [--since 10m|TIME] [--limit N]    recent transitions
  conns [--client IP] [--limit N]          IPVS connections and persistence templates: why a client lands where it does
  backend drain|undrain SERVICE BACKEND    weight 0: connections stay, new clients avoid it
  backend disable|enable SERVICE BACKEND   take a backend out of IPVS / put it back
  backend add SERVICE ADDRESS[:PORT] [--weight N]
  backend remove SERVICE ADDRESS[:PORT]
  failover GROUP                           move GROUP's VIPs to the best other director
  demote GROUP                             give up GROUP here and stay backup until promote/clear (kept across restarts)
  promote GROUP                            take GROUP here and keep it until demote/clear (kept across restarts)
  clear GROUP                              drop demote/promote: back to priority-based election
  reload                                   reload the config (an invalid one changes nothing)
  check-config                             validate the config lvsd would load

Backend changes are cluster state: they reach every director and survive restarts.
`

// usageError is a mistake in the command line; it prints with the usage hint.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// Main runs lvsctl with args (without the program name) and returns the exit
// status: 0 done, 1 lvsd refused or failed, 2 bad command line.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lvsctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", "/run/lvsd/lvsd.sock", "control socket of lvsd")
	url := fs.String("url", "", "control API URL (TCP listener), e.g. http://198.18.0.11:9080")
	tokenFile := fs.String("token-file", "", "file holding the control API token (with --url)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "lvsctl: %v\n%s", err, usage)
		return 2
	}
	var client *api.Client
	if *url != "" {
		if *tokenFile == "" {
			fmt.Fprintln(stderr, "lvsctl: --url needs --token-file (the TCP control API requires a token)")
			return 2
		}
		tok, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "lvsctl: read token: %v\n", err)
			return 2
		}
		client = api.NewTCPClient(strings.TrimRight(*url, "/"), strings.TrimSpace(string(tok)))
	} else {
		client = api.NewUnixClient(*socket)
	}
	// --json may also follow the command (lvsctl status --json).
	var rest []string
	for _, a := range fs.Args() {
		if a == "--json" || a == "-json" {
			*asJSON = true
			continue
		}
		rest = append(rest, a)
	}
	c := &cli{client: client, out: stdout, json: *asJSON}
	err := c.dispatch(ctx, rest)
	var ue usageError
	var ae *api.Error
	// Errors go to stderr, --json or not: stdout carries results only.
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "lvsctl: %s\n\n%s", ue.msg, usage)
		return 2
	case errors.Is(err, errInvalidConfig):
		return 1
	case errors.As(err, &ae):
		fmt.Fprintf(stderr, "lvsctl: %s\n", ae.Msg)
		if ae.Hint != "" {
			fmt.Fprintf(stderr, "hint: %s\n", ae.Hint)
		}
		return 1
	default:
		fmt.Fprintf(stderr, "lvsctl: %v\n", err)
		return 1
	}
}

var errInvalidConfig = errors.New("invalid config")

type cli struct {
	client *api.Client
	out    io.Writer
	json   bool
}

func (c *cli) dispatch(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "status":
		if len(rest) != 0 {
			return usagef("status takes no arguments")
		}
		st, err := c.client.Status(ctx)
		if err != nil {
			return err
		}
		return c.print(st, func(w io.Writer) { printStatus(w, st) })
	case "events":
		return c.events(ctx, rest)
	case "conns":
		return c.conns(ctx, rest)
	case "backend":
		return c.backend(ctx, rest)
	case "failover", "demote", "promote", "clear":
		if len(rest) != 1 {
			return usagef("%s takes one VIP group name", cmd)
		}
		g, err := c.client.Group(ctx, cmd, rest[0])
		if err != nil {
			return err
		}
		return c.print(g, func(w io.Writer) {
			fmt.Fprintf(w, "%s: group %s is now %s here (owner %s)\n", cmd, g.Name, g.State, orDash(g.Owner))
			if g.Override != "" {
				fmt.Fprintf(w, "  %s is kept here, across restarts, until `lvsctl clear %s` on this director\n", g.Override, g.Name)
			}
		})
	case "reload", "check-config":
		if len(rest) != 0 {
			return usagef("%s takes no arguments", cmd)
		}
		var res api.CheckResult
		var err error
		if cmd == "reload" {
			res, err = c.client.Reload(ctx)
		} else {
			res, err = c.client.CheckConfig(ctx)
		}
		if err != nil {
			return err
		}
		if perr := c.print(res, func(w io.Writer) { printCheck(w, cmd, res) }); perr != nil {
			return perr
		}
		if !res.OK {
			return errInvalidConfig
		}
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(c.out, usage)
		return nil
	}
	return usagef("unknown command %q", cmd)
}

func (c *cli) events(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	sinceArg := fs.String("since", "", "only events after this: a duration back from now (10m) or an RFC 3339 time")
	limit := fs.Int("limit", 50, "at most this many events")
	if err := fs.Parse(args); err != nil {
		return usagef("events: %v", err)
	}
	if fs.NArg() != 0 {
		return usagef("events takes no positional arguments")
	}
	if *limit < 1 || *limit > 10000 {
		return usagef("events: --limit must be 1..10000, got %d", *limit)
	}
	var since time.Time
	if *sinceArg != "" {
		if d, err := time.ParseDuration(*sinceArg); err == nil {
			since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339Nano, *sinceArg); err == nil {
			since = t
		} else {
			return usagef("events: --since %q is neither a duration (10m) nor an RFC 3339 time", *sinceArg)
		}
	}
	ev, err := c.client.Events(ctx, since, *limit)
	if err != nil {
		return err
	}
	return c.print(ev, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tKIND\tSUBJECT\tCHANGE\tREASON")
		for _, e := range ev {
			change := e.To
			if e.From != "" {
				change = e.From + " -> " + e.To
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Kind, e.Subject, change, e.Reason)
		}
		tw.Flush()
	})
}

func (c *cli) conns(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("conns", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	clientArg := fs.String("client", "", "only this client's entries (IP address)")
	limit := fs.Int("limit", 1000, "at most this many entries")
	if err := fs.Parse(args); err != nil {
		return usagef("conns: %v", err)
	}
	if fs.NArg() != 0 {
		return usagef("conns takes no positional arguments")
	}
	if *limit < 1 || *limit > 1000000 {
		return usagef("conns: --limit must be 1..1000000, got %d", *limit)
	}
	var client netip.Addr
	if *clientArg != "" {
		a, err := netip.ParseAddr(*clientArg)
		if err != nil {
			return usagef("conns: --client %q is not an IP address", *clientArg)
		}
		client = a
	}
	conns, err := c.client.Connections(ctx, client, *limit)
	if err != nil {
		return err
	}
	return c.print(conns, func(w io.Writer) {
		for _, x := range conns {
			if x.Template && client.IsValid() {
				fmt.Fprintf(w, "%s sticks to %s through %s: persistence template, %.0fs left\n", x.Client, x.Backend, orDash(x.Service), x.Expires)
			}
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tPRO\tCLIENT\tVIRTUAL\tBACKEND\tSTATE\tEXPIRES")
		for _, x := range conns {
			state := x.State
			if x.Template {
				state = "TEMPLATE"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0fs\n", orDash(x.Service), x.Protocol, x.Client, x.Virtual, x.Backend, state, x.Expires)
		}
		tw.Flush()
		if len(conns) == 0 {
			fmt.Fprintln(w, "no IPVS connections")
		}
	})
}

func (c *cli) backend(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("backend needs an action: %s", strings.Join(api.BackendActions, "|"))
	}
	action := args[0]
	known := false
	for _, a := range api.BackendActions {
		known = known || a == action
	}
	if !known {
		return usagef("unknown backend action %q (want %s)", action, strings.Join(api.BackendActions, "|"))
	}
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	weight := fs.Int("weight", -1, "weight of an added backend (0..65535)")
	// Allow flags after the positional arguments: "backend add web 1.2.3.4 --weight 3".
	var pos []string
	rest := args[1:]
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			return usagef("backend %s: %v", action, err)
		}
		rest = fs.Args()
		if len(rest) > 0 {
			pos = append(pos, rest[0])
			rest = rest[1:]
		}
	}
	if len(pos) != 2 {
		return usagef("backend %s takes SERVICE and BACKEND (ADDRESS[:PORT]), got %d argument(s)", action, len(pos))
	}
	if err := checkBackendArg(pos[1]); err != nil {
		return usagef("backend %s: %v", action, err)
	}
	req := api.BackendRequest{Service: pos[0], Backend: pos[1]}
	if *weight != -1 {
		if action != "add" {
			return usagef("--weight applies to backend add only")
		}
		if *weight < 0 || *weight > 65535 {
			return usagef("--weight must be 0..65535, got %d", *weight)
		}
		req.Weight = weight
	}
	b, err := c.client.Backend(ctx, action, req)
	if err != nil {
		return err
	}
	return c.print(b, func(w io.Writer) {
		if b.Origin == "removed" {
			fmt.Fprintf(w, "%s: %s/%s removed\n", action, req.Service, b.Address)
			return
		}
		fmt.Fprintf(w, "%s: %s/%s admin=%s weight=%d health=%s\n", action, req.Service, b.Address, orDash(b.Admin), b.Weight, b.Health)
	})
}

// checkBackendArg accepts ADDRESS or ADDRESS:PORT, IPv6 as [ADDR]:PORT.
func checkBackendArg(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if _, err := netip.ParseAddrPort(s); err != nil {
		return fmt.Errorf("%q is not ADDRESS or ADDRESS:PORT (IPv6 with a port: [2001:db8::1]:80)", s)
	}
	return nil
}

func (c *cli) print(v any, human func(io.Writer)) error {
	if c.json {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(c.out)
	return nil
}

func printCheck(w io.Writer, cmd string, res api.CheckResult) {
	if res.OK {
		fmt.Fprintf(w, "%s: %s is valid\n", cmd, res.Config)
		for _, ch := range res.Changes {
			fmt.Fprintf(w, "  %s\n", ch)
		}
		if cmd == "reload" && len(res.Changes) == 0 {
			fmt.Fprintln(w, "  no changes")
		}
		return
	}
	fmt.Fprintf(w, "%s: %s is invalid; nothing was changed\n", cmd, res.Config)
	for _, e := range res.Errors {
		fmt.Fprintf(w, "  %s\n", e)
	}
}

func printStatus(w io.Writer, st api.Status) {
	fmt.Fprintf(w, "Node %s (%s), config %s, up since %s\n", st.Node, st.Mode, st.Config, st.Started.Local().Format(time.DateTime))
	if len(st.Members) > 0 {
		fmt.Fprintln(w, "\nMembers:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NAME\tADDRESS\tSTATE\tLAST SEEN")
		for _, m := range st.Members {
			state := "dead"
			switch {
			case m.Self:
				state = "self"
			case m.Alive:
				state = "alive"
			}
			if m.Witness {
				state += " (witness)"
			}
			seen := "-"
			if !m.LastSeen.IsZero() && !m.Self {
				seen = time.Since(m.LastSeen).Round(time.Millisecond).String() + " ago"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", m.Name, orDash(m.Address), state, seen)
		}
		tw.Flush()
	}
	if len(st.Groups) > 0 {
		fmt.Fprintln(w, "\nVIP groups:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  GROUP\tSTATE\tOWNER\tPRIORITY\tINTERFACE\tADDRESSES\tREASON")
		for _, g := range st.Groups {
			prio := strconv.Itoa(g.Priority)
			if g.Priority != g.BasePriority {
				prio += fmt.Sprintf(" (base %d)", g.BasePriority)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Name, strings.ToUpper(g.State), orDash(g.Owner), prio, g.Interface, strings.Join(g.Addresses, ","), g.Reason)
		}
		tw.Flush()
	}
	if st.Sync != nil {
		roles := []string{}
		if st.Sync.Master {
			roles = append(roles, "master")
		}
		if st.Sync.Backup {
			roles = append(roles, "backup")
		}
		fmt.Fprintf(w, "\nConnection sync: %s on %s, syncid %d\n", orDash(strings.Join(roles, "+")), st.Sync.Interface, st.Sync.SyncID)
	}
	if len(st.Services) == 0 {
		fmt.Fprintln(w, "\nNo services.")
		return
	}
	fmt.Fprintln(w, "\nServices:")
	// Backend rows share column widths across services; a service's line
	// spans the columns (its flags must not widen Forward), as in ipvsadm.
	header := []string{"  -> RemoteAddress:Port", "Forward", "Weight", "ActiveConn", "InActConn", "Health", "Admin", "Last change"}
	type block struct {
		head string // first column of the service line
		rest string
		rows [][]string
	}
	var blocks []block
	widths := make([]int, len(header))
	fit := func(row []string) {
		for i, c := range row {
			widths[i] = max(widths[i], len(c))
		}
	}
	fit(header)
	for _, s := range st.Services {
		flags := s.Scheduler
		if s.Persistent {
			flags += " persistent " + persistSeconds(s.Timeout)
			if s.Granularity != 0 {
				flags += " mask " + maskString(s.Key, s.Granularity)
			}
		}
		if s.OnePacket {
			flags += " ops"
		}
		extra := "[" + s.Name
		if s.Group != "" {
			extra += ", group " + s.Group
		}
		if !s.QuorumUp {
			extra += ", QUORUM LOST"
		}
		if !s.InKernel {
			extra += ", NOT IN KERNEL"
		}
		extra += "]"
		b := block{head: ipvsadmKey(s.Key), rest: flags + " " + extra}
		widths[0] = max(widths[0], len(b.head))
		for _, be := range s.Backends {
			weight := strconv.Itoa(be.Weight)
			if !be.InKernel {
				weight = "-"
			}
			if be.ConfigWeight != be.Weight && be.InKernel {
				weight += fmt.Sprintf(" (cfg %d)", be.ConfigWeight)
			}
			change := be.Reason
			if !be.Since.IsZero() {
				change = strings.TrimSpace(be.Since.Local().Format("15:04:05") + " " + be.Reason)
			}
			admin := be.Admin
			if be.Origin == "runtime" {
				admin = strings.TrimSpace(admin + " added")
			}
			if be.Origin == "sorry" {
				admin = strings.TrimSpace(admin + " sorry-server")
			}
			row := []string{"  -> " + be.Address, forwardName(be.Forward), weight, strconv.Itoa(be.ActiveConns), strconv.Itoa(be.InactiveConns), be.Health, orDash(admin), orDash(change)}
			fit(row)
			b.rows = append(b.rows, row)
		}
		blocks = append(blocks, b)
	}
	line := func(cells []string) {
		var sb strings.Builder
		for i, c := range cells {
			if i == len(cells)-1 {
				sb.WriteString(c)
				break
			}
			fmt.Fprintf(&sb, "%-*s ", widths[i], c)
		}
		fmt.Fprintln(w, strings.TrimRight(sb.String(), " "))
	}
	fmt.Fprintf(w, "%-*s %s\n", widths[0], "Prot LocalAddress:Port", "Scheduler Flags")
	line(header)
	for _, b := range blocks {
		fmt.Fprintf(w, "%-*s %s\n", widths[0], b.head, b.rest)
		for _, r := range b.rows {
			line(r)
		}
	}
}

// persistSeconds renders a persistence timeout in seconds, as ipvsadm does:
// the API's "8m20s" prints as "500".
func persistSeconds(timeout string) string {
	if d, err := time.ParseDuration(timeout); err == nil {
		return strconv.FormatInt(int64(d/time.Second), 10)
	}
	return timeout
}

// maskString shows a persistence granularity as ipvsadm does: a netmask for
// IPv4 services, a prefix length for IPv6 ones.
func maskString(key string, bits int) string {
	if strings.Contains(key, "[") || strings.HasSuffix(key, "/ipv6") {
		return "/" + strconv.Itoa(bits)
	}
	m := net.CIDRMask(bits, 32)
	return net.IP(m).String()
}

// ipvsadmKey renders "tcp:198.18.1.63:0" as ipvsadm does: "TCP  198.18.1.63:0".
func ipvsadmKey(k string) string {
	proto, rest, ok := strings.Cut(k, ":")
	if !ok {
		return k
	}
	if proto == "fwm" {
		return "FWM  " + rest
	}
	return strings.ToUpper(proto) + "  " + rest
}

func forwardName(f string) string {
	switch f {
	case "dr":
		return "Route"
	case "nat":
		return "Masq"
	case "tunnel":
		return "Tunnel"
	}
	return f
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
