package daemon

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/miekg/dns"

	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/fwmark"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/healthcheck/policy"
	"github.com/lvsd/lvsd/vrrp"
)

// This file maps config structs onto the specs of the packages that do the
// work; none of them imports config.

func familyOf(f config.Family) director.Family {
	if f == config.IPv6 {
		return director.IPv6
	}
	return director.IPv4
}

func protocolOf(p config.Protocol) director.Protocol {
	switch p {
	case config.UDP:
		return director.UDP
	case config.SCTP:
		return director.SCTP
	case config.TCP:
		return director.TCP
	}
	return 0
}

func forwardOf(f config.Forward) director.Forward {
	switch f {
	case config.ForwardNAT:
		return director.ForwardNAT
	case config.ForwardTunnel:
		return director.ForwardTunnel
	}
	return director.ForwardDR
}

func serviceKeyOf(s *config.Service) director.ServiceKey {
	k := director.ServiceKey{Family: familyOf(s.Family), FWMark: s.FWMark}
	if s.FWMark == 0 {
		k.Protocol = protocolOf(s.Protocol)
		k.Address = s.Address
		k.Port = s.Port
	}
	return k
}

// serviceOf is the kernel-visible part of a configured service.
func serviceOf(s *config.Service) director.Service {
	// The granularity goes to the kernel with or without persistence: an
	// IPv6 service needs a prefix length of 1..128 either way, and /32 or
	// /128 is what ipvsadm and keepalived send, so their services are
	// adopted without a write.
	ds := director.Service{Key: serviceKeyOf(s), Scheduler: s.Scheduler, PersistenceBits: s.PersistenceBits}
	if s.Persistent() {
		ds.Flags |= director.FlagPersistent
		ds.Timeout = s.Persistence
	}
	if s.OnePacket {
		ds.Flags |= director.FlagOnePacket
	}
	for _, f := range s.SchedulerFlags {
		switch f {
		case "sh-fallback", "mh-fallback":
			ds.Flags |= director.FlagSchedSH1
		case "sh-port", "mh-port":
			ds.Flags |= director.FlagSchedSH2
		}
	}
	return ds
}

func destOf(b *config.Backend) director.Destination {
	d := director.Destination{
		Key:            director.DestKey{Address: b.Address, Port: b.Port},
		Weight:         b.Weight,
		Forward:        forwardOf(b.Forward),
		UpperThreshold: b.UpperThreshold,
		LowerThreshold: b.LowerThreshold,
		TunnelPort:     b.TunnelPort,
	}
	switch b.TunnelType {
	case "gue":
		d.TunnelType = director.TunnelGUE
	case "gre":
		d.TunnelType = director.TunnelGRE
	}
	switch b.TunnelChecksum {
	case "csum":
		d.TunnelFlags = director.TunnelCsum
	case "remcsum":
		d.TunnelFlags = director.TunnelRemCsum
	}
	return d
}

func policyOf(s *config.Service) policy.Policy {
	p := policy.Policy{Quorum: s.Quorum, Hysteresis: s.QuorumHysteresis}
	if s.OnFailure == config.OnFailureInhibit {
		p.OnFailure = policy.Inhibit
	}
	if s.SorryServer.IsValid() {
		p.Sorry = &director.Destination{
			Key:     director.DestKey{Address: s.SorryServer.Addr(), Port: s.SorryServer.Port()},
			Weight:  1,
			Forward: forwardOf(s.Forward),
		}
	}
	return p
}

// checkSpec maps a configured check onto the health checker's spec.
func checkSpec(s *config.Service, c *config.Check) healthcheck.Spec {
	spec := healthcheck.Spec{
		Type:         healthcheck.Type(c.Type),
		Interval:     c.Interval,
		Timeout:      c.Timeout,
		Rise:         c.Rise,
		Fall:         c.Fall,
		RetryDelay:   c.RetryDelay,
		InitialDelay: c.InitialDelay,
		Alpha:        s.Alpha,
		Source:       c.Source,
		Port:         c.Port,
		Method:       c.Method,
		Path:         c.Path,
		Host:         c.Host,
		Headers:      c.Headers,
		SNI:          c.SNI,
		TLSInsecure:  !c.TLSVerify,
		CAFile:       c.CAFile,
		Command:      c.Command,
		Dynamic:      c.Dynamic,
		QueryName:    c.QueryName,
		Answer:       c.Answer,
		GRPCService:  c.GRPCService,
		TLS:          c.TLS,
	}
	for _, r := range c.Status {
		if r.Lo == r.Hi {
			spec.Status = append(spec.Status, strconv.Itoa(r.Lo))
		} else {
			spec.Status = append(spec.Status, fmt.Sprintf("%d-%d", r.Lo, r.Hi))
		}
	}
	if c.BodyRegex != nil {
		spec.BodyRegex = c.BodyRegex.String()
	}
	if c.BodySHA256 != nil {
		spec.BodySHA256 = hex.EncodeToString(c.BodySHA256)
	}
	if c.Type == config.CheckDNS {
		spec.QueryType = dns.TypeToString[c.QueryType]
		spec.Rcode = dns.RcodeToString[c.RCode]
	}
	return spec
}

// checked reports whether a backend has a health check at all.
func checked(c *config.Check) bool { return c != nil && c.Type != config.CheckNone }

// markOf returns the nftables mark a firewall-mark service asks lvsd to own.
func markOf(s *config.Service) (fwmark.Mark, bool) {
	if s.FWMark == 0 || s.Mark == nil {
		return fwmark.Mark{}, false
	}
	return fwmark.Mark{
		Mark:        s.FWMark,
		Protocol:    protocolOf(s.Mark.Protocol),
		Ports:       s.Mark.Ports,
		Destination: s.Mark.Destination,
	}, true
}

// vrrpSpec maps [node], [cluster], [[vip_group]] and [[track_script]].
func vrrpSpec(cfg *config.Config, witness bool) vrrp.Spec {
	spec := vrrp.Spec{
		Node:    vrrp.NodeSpec{Name: cfg.Node.Name, Interface: cfg.Node.Interface},
		Witness: witness,
	}
	if c := cfg.Cluster; c != nil {
		cs := &vrrp.ClusterSpec{
			Bind:              c.Bind.String(),
			Key:               c.Key,
			KeyFile:           c.KeyFile,
			Insecure:          c.Insecure,
			Members:           c.Members,
			Witnesses:         c.Witnesses,
			HeartbeatInterval: c.HeartbeatInterval,
			DeadAfter:         c.DeadAfter,
			Realtime:          c.RealtimePriority,
		}
		if c.RealtimePriority == 0 {
			cs.Realtime = -1 // vrrp: -1 is off, 0 its default
		}
		if c.Advertise.IsValid() {
			cs.Advertise = c.Advertise.String()
		}
		for _, p := range c.Peers {
			cs.Peers = append(cs.Peers, p.String())
		}
		spec.Cluster = cs
	}
	for _, t := range cfg.TrackScripts {
		spec.TrackScripts = append(spec.TrackScripts, vrrp.TrackScriptSpec{
			Name: t.Name, Command: t.Command, Interval: t.Interval, Timeout: t.Timeout,
			Weight: t.Weight, Rise: t.Rise, Fall: t.Fall,
		})
	}
	if witness {
		return spec
	}
	for _, g := range cfg.VIPGroups {
		gs := vrrp.GroupSpec{
			Name:          g.Name,
			Interface:     g.Interface,
			Addresses:     g.Addresses,
			Priority:      g.Priority,
			Preempt:       g.Preempt,
			PreemptDelay:  g.PreemptDelay,
			GARPCount:     g.GARPCount,
			GARPInterval:  g.GARPInterval,
			GARPRefresh:   g.GARPRefresh,
			NotifyMaster:  g.NotifyMaster,
			NotifyBackup:  g.NotifyBackup,
			NotifyFault:   g.NotifyFault,
			NotifyStop:    g.NotifyStop,
			NotifyTimeout: g.NotifyTimeout,
		}
		for _, t := range g.TrackInterfaces {
			gs.TrackInterface = append(gs.TrackInterface, vrrp.TrackInterface{Name: t.Name, Weight: t.Weight})
		}
		for _, t := range g.TrackScripts {
			w := t.Weight // config resolved the script's own weight
			gs.TrackScript = append(gs.TrackScript, vrrp.TrackRef{Name: t.Name, Weight: &w})
		}
		for _, t := range g.TrackServices {
			w := t.Weight
			gs.TrackService = append(gs.TrackService, vrrp.TrackRef{Name: t.Name, Weight: &w})
		}
		spec.Groups = append(spec.Groups, gs)
	}
	return spec
}

// backendTarget is the address a backend's check connects to.
func backendTarget(b netip.AddrPort, c *config.Check) healthcheck.Target {
	t := healthcheck.Target{Addr: b.Addr(), Port: b.Port()}
	if c != nil && c.Port != 0 {
		t.Port = c.Port
	}
	return t
}
