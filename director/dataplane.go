package director

import "context"

// Dataplane is the director's view of the kernel's IPVS table. The kernel
// implementation lives in director/ipvsdp; an in-memory fake in director/dptest.
type Dataplane interface {
	// Apply performs the writes in order, batching where it can. A failed op
	// does not stop the ones after it. It returns nil when every op succeeded,
	// otherwise a slice of len(ops) holding each op's error (nil where it
	// succeeded).
	Apply(ctx context.Context, ops []Op) []error
	// Services lists every virtual service in the kernel, owned or not.
	Services(ctx context.Context) ([]Service, error)
	// Destinations lists the destinations of one virtual service.
	Destinations(ctx context.Context, key ServiceKey) ([]Destination, error)
}
