// Package vm boots a stock Debian kernel that has IPVS under qemu and runs one
// shell command line inside it, returning its output and exit status.
//
// The host kernel has no IPVS, so everything that must touch real IPVS runs
// in this VM. The guest shares the host's root file system read-only over
// virtio-9p with a tmpfs overlay on top, so it runs the host's binaries (Go
// test binaries, ipvsadm, nft, ...) without copying anything. It has no NIC:
// nothing it does can leave it.
//
// Everything the VM needs is installed and built by [Ensure] and cached under
// one directory ([DefaultCacheDir], or $LVSD_LAB_CACHE):
//
//	lock                     flock(2) held while the cache is built
//	kernel/VERSION/          the extracted kernel package, depmod'ed, plus vmlinux
//	kernel/current           symlink to the kernel in use
//	initramfs/NAME.cpio      busybox + virtio/9p/overlay modules + init
//	runs/run-PID-*/          one VM run's FIFOs and writable share (removed after)
//
// Each part is built in a temporary directory and renamed into place, so an
// interrupted setup never leaves a half-built cache.
package vm
