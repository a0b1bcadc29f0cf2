package director

import "context"

// Dataplane is the director's view of the kernel's IPVS table. The kernel
// implementation lives in director/ipvsdp; an in-memory fake in director/dptest.
//
// Implementations must be safe for concurrent use: the reconciler reads the
// kernel for drift repair while it may be writing on behalf of another call.
//
// Errors must wrap the kernel's errno (a syscall.Errno, so errors.Is works)
// where the kernel gave one. The reconciler relies on these answers to learn
// about drift without a dump:
//   - add-service of an existing service: EEXIST
//   - any op naming a missing service (update/del-service, *-dest): ESRCH
//   - add-dest of an existing destination: EEXIST
//   - update-dest or del-dest of a missing destination: ENOENT
type Dataplane interface {
	// Apply performs the writes in order, batching where it can. A failed op
	// does not stop the ones after it. It returns nil when every op succeeded,
	// otherwise a slice of len(ops) holding each op's error (nil where it
	// succeeded).
	Apply(ctx context.Context, ops []Op) []error
	// Services lists every virtual service in the kernel, owned or not.
	Services(ctx context.Context) ([]Service, error)
	// Destinations lists the destinations of one virtual service. A missing
	// service is an error wrapping ESRCH.
	Destinations(ctx context.Context, key ServiceKey) ([]Destination, error)
}
