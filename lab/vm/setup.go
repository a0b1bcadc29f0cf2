package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// HostPackages are the Debian packages the lab needs on the host. keepalived
// is there because later benchmarks compare lvsd with it.
var HostPackages = []string{
	"qemu-system-x86", "busybox-static", "ipvsadm", "nftables", "iptables",
	"kmod", "cpio", "xz-utils", "curl", "iproute2", "keepalived", "util-linux",
}

// KernelMetaPackage is resolved to the concrete kernel package it depends on.
const KernelMetaPackage = "linux-image-amd64"

// Assets are the cached files a VM boots from.
type Assets struct {
	KernelVersion string // e.g. 6.1.0-56-amd64
	KernelDir     string // root of the extracted kernel package
	Vmlinux       string // uncompressed kernel, booted through its PVH entry
	Initramfs     string
	ModulesDir    string // KernelDir/lib/modules/KernelVersion
}

// Ensure installs missing host packages, fetches and prepares the kernel and
// builds the initramfs, reusing whatever is already cached. It holds the
// cache lock while it works, so concurrent callers build things once.
func Ensure(ctx context.Context, cacheDir string, log *slog.Logger, out io.Writer) (*Assets, error) {
	unlock, err := lockCache(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := ensurePackages(ctx, log, out); err != nil {
		return nil, err
	}
	a, err := ensureKernel(ctx, cacheDir, log, out)
	if err != nil {
		return nil, err
	}
	if a.Initramfs, err = ensureInitramfs(ctx, cacheDir, a, log); err != nil {
		return nil, err
	}
	return a, nil
}

// missingPackages asks dpkg which of pkgs are not installed.
func missingPackages(ctx context.Context, pkgs []string) ([]string, error) {
	args := append([]string{"-W", "-f", "${Package} ${db:Status-Abbrev}\n"}, pkgs...)
	outb, err := exec.CommandContext(ctx, "dpkg-query", args...).Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) { // exit 1 just means some are unknown
		return nil, fmt.Errorf("dpkg-query: %w", err)
	}
	return parseMissing(pkgs, outb), nil
}

// parseMissing returns the packages of want that dpkg-query output does not
// show as installed ("ii").
func parseMissing(want []string, dpkgOut []byte) []string {
	installed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(dpkgOut))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[1] == "ii" {
			name, _, _ := strings.Cut(f[0], ":") // drop an :amd64 suffix
			installed[name] = true
		}
	}
	var miss []string
	for _, p := range want {
		if !installed[p] {
			miss = append(miss, p)
		}
	}
	return miss
}

func ensurePackages(ctx context.Context, log *slog.Logger, out io.Writer) error {
	miss, err := missingPackages(ctx, HostPackages)
	if err != nil {
		return err
	}
	if len(miss) == 0 {
		return nil
	}
	log.Info("installing host packages", "packages", miss)
	if err := runCmd(ctx, out, "", "apt-get", aptLockWait, "update", "-q"); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	args := append([]string{aptLockWait, "install", "-y", "-q", "--no-install-recommends"}, miss...)
	if err := runCmd(ctx, out, "", "apt-get", args...); err != nil {
		return fmt.Errorf("apt-get install %s: %w", strings.Join(miss, " "), err)
	}
	return nil
}

// aptLockWait makes apt-get wait for another apt/dpkg run (another lab
// setup, say) instead of failing at once.
const aptLockWait = "-oDPkg::Lock::Timeout=600"

func runCmd(ctx context.Context, out io.Writer, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// assetsAt describes a prepared kernel directory; it reports an error when
// anything is missing, so that a damaged cache is rebuilt.
func assetsAt(dir string) (*Assets, error) {
	ver := filepath.Base(dir)
	a := &Assets{
		KernelVersion: ver,
		KernelDir:     dir,
		Vmlinux:       filepath.Join(dir, "vmlinux"),
		ModulesDir:    filepath.Join(dir, "lib", "modules", ver),
	}
	for _, p := range []string{a.Vmlinux, filepath.Join(a.ModulesDir, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("kernel cache %s incomplete: %w", dir, err)
		}
	}
	return a, nil
}

func ensureKernel(ctx context.Context, cacheDir string, log *slog.Logger, out io.Writer) (*Assets, error) {
	kdir := filepath.Join(cacheDir, "kernel")
	current := filepath.Join(kdir, "current")
	if target, err := os.Readlink(current); err == nil {
		if a, err := assetsAt(filepath.Join(kdir, target)); err == nil {
			return a, nil
		}
	}
	pkg, err := resolveKernelPackage(ctx, out)
	if err != nil {
		return nil, err
	}
	ver, ok := strings.CutPrefix(pkg, "linux-image-")
	if !ok || ver == "" {
		return nil, fmt.Errorf("kernel package %q does not look like linux-image-VERSION", pkg)
	}
	final := filepath.Join(kdir, ver)
	if a, err := assetsAt(final); err == nil {
		return a, setSymlink(ver, current)
	}
	log.Info("preparing kernel", "package", pkg)
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return nil, fmt.Errorf("create kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(kdir, ".tmp-"+ver+"-")
	if err != nil {
		return nil, fmt.Errorf("create kernel temp dir: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op after the rename below
	// _apt must be able to write the download; the dir is ours and temporary.
	if err := os.Chmod(tmp, 0o777); err != nil {
		return nil, fmt.Errorf("chmod kernel temp dir: %w", err)
	}
	if err := runCmd(ctx, out, tmp, "apt-get", "download", "-q", pkg); err != nil {
		return nil, err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s: want one .deb in %s, found %d", pkg, tmp, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if err := runCmd(ctx, out, "", "dpkg-deb", "-x", debs[0], root); err != nil {
		return nil, err
	}
	os.Remove(debs[0])
	if err := os.Chmod(root, 0o755); err != nil {
		return nil, fmt.Errorf("chmod kernel root: %w", err)
	}
	if err := runCmd(ctx, out, "", "depmod", "-b", root, ver); err != nil {
		return nil, err
	}
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-"+ver)
	if err := extractVmlinux(ctx, vmlinuz, filepath.Join(root, "vmlinux")); err != nil {
		return nil, err
	}
	if err := os.Rename(root, final); err != nil {
		return nil, fmt.Errorf("install kernel into cache: %w", err)
	}
	if err := setSymlink(ver, current); err != nil {
		return nil, err
	}
	return assetsAt(final)
}

// resolveKernelPackage finds the concrete package behind linux-image-amd64,
// refreshing apt's lists once if it does not know the package yet.
func resolveKernelPackage(ctx context.Context, out io.Writer) (string, error) {
	for attempt := 0; attempt < 2; attempt++ {
		b, err := exec.CommandContext(ctx, "apt-cache", "depends", KernelMetaPackage).Output()
		if err == nil {
			if pkg := parseKernelDepends(b); pkg != "" {
				return pkg, nil
			}
		}
		if attempt == 0 {
			if err := runCmd(ctx, out, "", "apt-get", aptLockWait, "update", "-q"); err != nil {
				return "", fmt.Errorf("apt-get update: %w", err)
			}
		}
	}
	return "", fmt.Errorf("resolve %s: apt-cache depends names no linux-image-* package", KernelMetaPackage)
}

// parseKernelDepends picks the first "Depends: linux-image-X" from
// `apt-cache depends` output.
func parseKernelDepends(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		dep, ok := strings.CutPrefix(line, "Depends: ")
		if ok && strings.HasPrefix(dep, "linux-image-") && !strings.ContainsAny(dep, "<>") {
			return dep
		}
	}
	return ""
}

// xzMagic starts the xz stream embedded in a bzImage.
var xzMagic = []byte("\xfd7zXZ\x00")

// extractVmlinux cuts the xz payload out of a bzImage and decompresses it, so
// that qemu can boot the ELF kernel straight through its PVH entry (no
// firmware, no in-guest decompression: seconds saved under TCG).
func extractVmlinux(ctx context.Context, vmlinuz, dst string) error {
	img, err := os.ReadFile(vmlinuz)
	if err != nil {
		return fmt.Errorf("read kernel image: %w", err)
	}
	off := bytes.Index(img, xzMagic)
	if off < 0 {
		return fmt.Errorf("%s: no xz payload (magic %q) found", vmlinuz, xzMagic)
	}
	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("create vmlinux: %w", err)
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(img[off:])
	cmd.Stdout = f
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("decompress %s at offset %d: %w: %s", vmlinuz, off, err, stderr.Bytes())
	}
	var hdr [4]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil || string(hdr[:]) != "\x7fELF" {
		return fmt.Errorf("decompressed %s is not an ELF file", vmlinuz)
	}
	return f.Close()
}

// setSymlink points link at target atomically (symlink beside it, rename).
func setSymlink(target, link string) error {
	tmp := link + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	return nil
}
