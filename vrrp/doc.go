// Package vrrp elects the owner of each VIP group among peer directors and
// owns the group's addresses while this node is master: it adds them
// (vishvananda/netlink, IPv6 without DAD), announces them (gratuitous ARP
// with mdlayher/arp, unsolicited neighbour advertisements with override
// with mdlayher/ndp) in a burst, once more 1.1 s later (past the neighbour
// locktime) and every garp_refresh, and removes them when it loses the
// group. It does not import config: the daemon maps [node], [cluster],
// [[vip_group]] and [[track_script]] onto Spec, whose fields carry the same
// names.
//
// # API for the daemon
//
//	n, err := vrrp.New(spec, logger)     // validates; touches nothing yet
//	n.SetEventHandler(func(vrrp.Event))  // transitions, in order, off the loop
//	n.SetStateDelegate(d)                // memberlist push-pull of daemon state
//	n.SetMessageHandler(func([]byte))    // receives others' Broadcast
//	n.SetDigest(b); n.SetDigestHandler(func(peer string, b []byte))
//	go n.Run(ctx)                        // blocks; ctx end = graceful stop
//	n.Stop(ctx)                          // graceful hand-over, waits for Run
//	n.Status()                           // members, groups, quorum
//	n.Demote(g); n.Promote(g); n.SetFault(g, on); n.ClearOverride(g)
//	n.SetServiceQuorum(service, up)      // from health checks (track_service)
//	n.Broadcast(b)                       // gossip to all members
//
// A witness (`lvsd witness`) is a Node with Spec.Witness set and no groups:
// it only votes. Without Spec.Cluster the node is standalone and owns every
// group whose interface is up.
//
// # Election
//
// Each node sends a small heartbeat (heartbeat.go) every heartbeat_interval
// to every configured peer address through memberlist's encrypted
// best-effort packet path, and at once whenever what it says changes. The
// peer address is the configured one, not memberlist's view, so heartbeats
// flow even while memberlist thinks the peer dead (partitions); memberlist
// itself carries gossip and push-pull, and configured peers it thinks dead
// are re-joined every second. A peer is alive while its last heartbeat is
// younger than dead_after. The rules (Elect, pure and deterministic):
//
//   - The owner is the alive, non-fault node with the highest effective
//     priority; equal priorities go to the lexically smaller name.
//   - A node never claims while a live peer claims. It sets "want" in its
//     heartbeat (after preempt_delay; never with preempt off) and the
//     claimant hands over; a graceful stop or Demote releases at once and
//     says so, and the peer takes over on receipt. So a connected cluster
//     has at most one owner. The only window is two nodes changing priority
//     at the same instant, which the next heartbeat resolves.
//   - A dead claimant is replaced at once.
//   - Two claims seen together (a healed partition): the lower releases at
//     once, the winner keeps the group and re-announces (keepalived #166 is
//     the bug of not doing so).
//   - With witnesses configured, a node needs a majority of the configured
//     members visible (itself included) and a majority of votes to claim or
//     keep a group; every node votes for the live claimant, else the best
//     eligible node. A director cut off from its peer but not from the
//     witness therefore cannot take the VIP: the witness votes for the
//     current owner.
//
// Split brain without a witness: with two directors and no third member, a
// partition between them makes both own the VIP (as with keepalived). When
// it heals, the lower one releases within one heartbeat and the higher one
// re-announces. Configure a witness to avoid the double ownership.
//
// Effective priority: priority plus the weights of tracked interfaces that
// are down, tracked scripts (negative weight while failing, positive while
// succeeding) and tracked services without quorum, clamped to 2..254; weight
// 0 means fault. The group's own interface is always tracked (down = fault).
// Demote pins 1 and hands over; Promote pins 255 and takes over regardless of
// preemption.
//
// Timing: with heartbeat_interval 20 ms and dead_after 100 ms a dead owner is
// replaced 80-100 ms after its last heartbeat. A process that is not
// scheduled for dead_after looks dead to its peers, so a clustered node runs
// its threads at SCHED_RR (ClusterSpec.Realtime, default 10, like
// keepalived's vrrp_rt_priority); scripts it runs are reset to normal
// scheduling. Under a CPU hog on both cores that took false failovers from 6
// in 150 s to none (bench/failover -stability).
package vrrp
