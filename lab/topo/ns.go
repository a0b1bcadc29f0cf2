package topo

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
)

// netnsDir is where iproute2 and vishvananda/netns keep named namespaces.
const netnsDir = "/run/netns"

// withNS runs fn on a locked OS thread switched into ns, and switches back.
// If switching back fails the thread stays locked, so the runtime discards
// it when the goroutine ends instead of reusing a thread in the wrong
// namespace.
func withNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return to the original netns (thread retired): %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// newNamedNS creates the named namespace /run/netns/name without moving the
// caller into it.
func newNamedNS(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	h, nerr := netns.NewNamed(name)
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it is in the new namespace.
		if nerr == nil {
			h.Close()
		}
		return netns.None(), fmt.Errorf("return to the original netns after creating %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		os.Remove(filepath.Join(netnsDir, name)) // NewNamed may leave the file on failure
		return netns.None(), fmt.Errorf("create netns %s: %w", name, nerr)
	}
	return h, nil
}

// deleteNamedNS unmounts and removes /run/netns/name. The namespace itself
// goes away when nothing else holds it.
func deleteNamedNS(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}
