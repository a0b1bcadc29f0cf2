// Package topo builds network topologies for tests, on the host and inside
// the lab VM: named network namespaces ("hosts") joined by veth pairs to one
// bridge (the "switch"), which lives in a namespace of its own, never in the
// caller's.
//
//	tp := topo.New(t)                           // switch + cleanup
//	client := tp.Host("client", "198.18.0.10/24", "2001:db8::10/64")
//	rs1 := tp.Host("rs1", "198.18.0.21/24")
//	rs1.ServeHTTP(":80")                          // answers with "rs1"
//	who, err := client.HTTPGet(ctx, "http://198.18.0.21/") // "rs1"
//
// Names. Every namespace is called PREFIX-NAME, where PREFIX is
// "lvt<pid>x<n>" (pid of the test process, n counting topologies in it), so
// parallel runs never collide and [Sweep] can remove what dead runs left
// behind: it removes only namespaces whose pid is no longer alive. A host's
// interface is eth0 in its namespace; its bridge port is a veth in the
// switch namespace. Nothing is created in the caller's namespace.
//
// Addresses must lie in the test networks 198.18.0.0/15 or 2001:db8::/32,
// with a prefix length ("198.18.0.10/24"); anything else is refused. IPv6
// duplicate address detection is off, so addresses are usable at once.
//
// Running things. [Host.Do] runs Go code with the calling OS thread switched
// into the host's namespace: sockets opened there stay in that namespace
// after Do returns, so tests can listen and dial without exec. Goroutines
// started inside Do do NOT inherit the namespace. [Host.Run] and
// [Host.Start] exec programs inside the namespace by forking from such a
// thread (no `ip netns exec`, which costs ~200 ms under TCG).
//
// Cleanup is guaranteed: t.Cleanup kills the processes the topology started
// (by PID, with their process group), closes its servers and deletes its
// namespaces, which takes their veths and the bridge with them. A SIGINT or
// SIGTERM handler runs the same cleanup for every live topology of the
// process, then lets the signal end the process, so Ctrl-C leaves nothing
// behind. Processes are started with Pdeathsig, so they die with the test
// process even when it is SIGKILLed.
//
// Methods that build the topology fail the test (t.Fatalf) on error and
// must be called from the test goroutine; methods that exercise it (Run,
// HTTPGet, Dial, ...) return errors.
package topo
