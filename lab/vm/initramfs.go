package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// busyboxPath is the static busybox from Debian's busybox-static.
const busyboxPath = "/bin/busybox"

// initModules are what the initramfs needs to reach the host root and the
// output ports; their dependencies are added from modules.dep.
var initModules = []string{"virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay"}

// Mount tags of the two 9p shares and names of the two output ports.
const (
	tagHostRoot = "lvslabroot"
	tagIO       = "lvslabio"
	guestIODir  = "/lvslab-io"
	portOut     = "lvslab.out"
	portErr     = "lvslab.err"
)

// initScript is the initramfs's /init. It runs under static busybox; every
// command is a builtin, because each exec of a dynamic binary costs ~65 ms
// under TCG. It builds the guest root (host / read-only over 9p + a tmpfs
// overlay), mounts the writable share, links the cached module tree where
// modprobe looks, and hands over to stage2 (written by the host per run).
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
die() { echo "lvslab init: $*" >/dev/ttyS0; poweroff -f; sleep 5; }
while read -r m; do insmod "/modules/$m" || die "insmod $m"; done </modules/order
moddir=
for a in $(cat /proc/cmdline); do
	case "$a" in lvslab.moddir=*) moddir="${a#lvslab.moddir=}" ;; esac
done
[ -n "$moddir" ] || die "no lvslab.moddir= on the kernel command line"
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 ` + tagHostRoot + ` /lower || die "mount host root"
mount -t tmpfs -o mode=0755 tmpfs /rw || die "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || die "mount overlay"
mkdir -p /newroot` + guestIODir + `
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ` + tagIO + ` /newroot` + guestIODir + ` || die "mount io share"
kver=$(uname -r)
mkdir -p /newroot/usr/lib/modules
rm -rf "/newroot/usr/lib/modules/$kver"
ln -s "$moddir" "/newroot/usr/lib/modules/$kver"
mkdir -p /newroot/.lvslab
cp /bin/busybox /newroot/.lvslab/busybox
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /.lvslab/busybox sh ` + guestIODir + `/stage2.sh
`

// ensureInitramfs builds (once per kernel, busybox, init script and module
// set) the initramfs: busybox, init, and the modules init loads (initModules,
// then the guest modules), with their dependencies, in load order.
func ensureInitramfs(ctx context.Context, cacheDir string, a *Assets, log *slog.Logger) (string, error) {
	ix, err := loadModIndex(a.ModulesDir)
	if err != nil {
		return "", err
	}
	order, err := ix.loadOrder(append(append([]string{}, initModules...), guestModules(ix)...))
	if err != nil {
		return "", fmt.Errorf("initramfs modules: %w", err)
	}
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return "", fmt.Errorf("read static busybox (package busybox-static): %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\nunsigned\n", a.KernelVersion, initScript, strings.Join(order, "\n"))
	h.Write(bb)
	name := fmt.Sprintf("%s-%s.cpio", a.KernelVersion, hex.EncodeToString(h.Sum(nil))[:12])
	dir := filepath.Join(cacheDir, "initramfs")
	final := filepath.Join(dir, name)
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	log.Info("building initramfs", "modules", len(order))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create initramfs cache: %w", err)
	}
	tree, err := os.MkdirTemp(dir, ".tree-")
	if err != nil {
		return "", fmt.Errorf("create initramfs tree: %w", err)
	}
	defer os.RemoveAll(tree)
	for _, d := range []string{"bin", "proc", "sys", "dev", "modules"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return "", fmt.Errorf("initramfs tree: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "bin", "busybox"), bb, 0o755); err != nil {
		return "", fmt.Errorf("initramfs busybox: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tree, "init"), []byte(initScript), 0o755); err != nil {
		return "", fmt.Errorf("initramfs init: %w", err)
	}
	var names []string
	for _, rel := range order {
		b, err := os.ReadFile(filepath.Join(a.ModulesDir, rel))
		if err != nil {
			return "", fmt.Errorf("initramfs module: %w", err)
		}
		if b, err = stripModuleSignature(b); err != nil {
			return "", fmt.Errorf("initramfs module %s: %w", rel, err)
		}
		n := filepath.Base(rel)
		names = append(names, n)
		if err := os.WriteFile(filepath.Join(tree, "modules", n), b, 0o644); err != nil {
			return "", fmt.Errorf("initramfs module: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "modules", "order"), []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("initramfs module order: %w", err)
	}
	tmp := filepath.Join(dir, ".tmp-"+name)
	if err := writeCpio(ctx, tree, tmp); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("install initramfs: %w", err)
	}
	return final, nil
}

func loadModIndex(modDir string) (*modIndex, error) {
	dep, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("open module index: %w", err)
	}
	defer dep.Close()
	var builtin io.Reader
	if f, err := os.Open(filepath.Join(modDir, "modules.builtin")); err == nil {
		defer f.Close()
		builtin = f
	}
	return parseModules(dep, builtin)
}

// writeCpio archives tree in the newc format the kernel unpacks.
func writeCpio(ctx context.Context, tree, dst string) error {
	var list bytes.Buffer
	var paths []string
	err := filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(tree, p); rel != "." {
			paths = append(paths, rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk initramfs tree: %w", err)
	}
	sort.Strings(paths)
	for _, p := range paths {
		list.WriteString(p + "\n")
	}
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("create initramfs: %w", err)
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, "cpio", "-o", "-H", "newc", "--quiet", "--owner", "0:0")
	cmd.Dir = tree
	cmd.Stdin = &list
	cmd.Stdout = out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cpio: %w: %s", err, stderr.Bytes())
	}
	return out.Close()
}
