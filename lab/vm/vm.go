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
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec is one VM run: a shell script run by the guest's /bin/sh.
type Spec struct {
	// Script is run by /bin/sh in Dir (a host path; the guest sees the same
	// tree). Its exit status is the run's.
	Script string
	Dir    string
	// Env holds extra KEY=VALUE pairs. LVSD_LAB_VM=1 is always set.
	Env []string
	// MemoryMB defaults to 1024, CPUs to 2.
	MemoryMB int
	CPUs     int
	// Accel is "tcg", "kvm" or "" to choose (see ChooseAccel).
	Accel string
	// BootTimeout bounds the boot (until the script starts); a boot that
	// takes longer is treated as hung, killed and tried once more. Default
	// 3 minutes: a boot takes 5-10 s on an idle host, much more on a busy one.
	BootTimeout time.Duration
	// Stdout and Stderr receive the script's output as it arrives.
	Stdout, Stderr io.Writer
}

// Result describes a finished VM run.
type Result struct {
	ExitCode int
	Accel    string
	// Boot is from qemu's start until the guest is ready to run the script
	// (kernel, initramfs and module loading done); Total until qemu exited.
	Boot, Total time.Duration
	// CPU is qemu's user+system CPU time: unlike the wall-clock figures it
	// hardly depends on how busy the host is.
	CPU time.Duration
}

// markerReady is written by stage2 on the stdout port just before the
// script starts; the host strips it and takes the boot time from it.
const markerReady = "@@lvslab:ready@@"

// Guest modules are loaded by the initramfs's init (from memory, with
// busybox insmod: no modprobe exec, no 9p reads), so tests need not depend
// on on-demand loading or pay for it inside timed sections. Each module
// costs boot time under TCG, so this is a chosen set; anything else still
// loads on demand through the kernel's modprobe upcall, which works because
// the guest has the host's modprobe and the cached module tree.
var (
	guestModulePrefixes = []string{"ip_vs_"}
	guestModuleNames    = []string{
		// libcrc32c (needed by nf_conntrack) has a soft dependency on the
		// crc32c crypto driver, which modules.dep does not list.
		"crc32c_generic",
		"nf_tables", "nft_ct", "nft_nat", "nft_chain_nat", "nft_masq", "nft_redir",
		"nft_compat", "nft_fib_inet", "nft_reject_inet", "nft_limit", "nft_log",
		"nft_numgen", "nft_hash", "nft_quota",
		"xt_mark", "xt_conntrack", "xt_multiport", "xt_comment", "xt_addrtype",
		"veth", "bridge", "macvlan", "dummy", "sch_netem",
	}
	guestModuleSkip = map[string]bool{
		"ip_vs_ftp": true, "ip_vs_pe_sip": true, // pull in NAT helpers nobody uses
	}
)

// guestModules returns the chosen modules that this kernel has as modules.
func guestModules(ix *modIndex) []string {
	var mods []string
	for _, n := range guestModuleNames {
		if _, ok := ix.path[n]; ok {
			mods = append(mods, n)
		}
	}
	return append(mods, ix.matching(guestModulePrefixes, guestModuleSkip)...)
}

// ChooseAccel picks KVM only where /dev/kvm is real hardware virtualization:
// the paravirtual kvm_pvm cannot boot a stock kernel. $LVSD_LAB_ACCEL wins.
func ChooseAccel() string {
	if a := os.Getenv("LVSD_LAB_ACCEL"); a != "" {
		return a
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return "tcg"
	}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		return "kvm"
	}
	return "tcg"
}

// qemuArgs builds the qemu command line; pure so it can be checked in tests.
func qemuArgs(a *Assets, accel string, memMB, cpus int, runDir string) ([]string, error) {
	var acc []string
	switch accel {
	case "tcg":
		acc = []string{"-accel", "tcg,thread=multi", "-cpu", "max"}
	case "kvm":
		acc = []string{"-accel", "kvm", "-cpu", "host"}
	default:
		return nil, fmt.Errorf("accelerator %q: want tcg or kvm", accel)
	}
	if memMB < 128 {
		return nil, fmt.Errorf("guest memory %d MB: want at least 128", memMB)
	}
	if cpus < 1 {
		return nil, fmt.Errorf("guest CPUs %d: want at least 1", cpus)
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-no-reboot",
		"-display", "none", "-monitor", "none",
		"-machine", "pc",
	}
	args = append(args, acc...)
	args = append(args,
		"-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(memMB),
		"-kernel", a.Vmlinux, "-initrd", a.Initramfs,
		"-append", kernelArgs(a),
		"-serial", "file:"+filepath.Join(runDir, "console.log"),
		"-virtfs", "local,path=/,mount_tag="+tagHostRoot+",security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path="+filepath.Join(runDir, "io")+",mount_tag="+tagIO+",security_model=none,multidevs=remap",
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "file,id=out,path="+filepath.Join(runDir, "out.fifo"),
		"-device", "virtserialport,bus=vser.0,nr=1,chardev=out,name="+portOut,
		"-chardev", "file,id=err,path="+filepath.Join(runDir, "err.fifo"),
		"-device", "virtserialport,bus=vser.0,nr=2,chardev=err,name="+portErr,
	)
	return args, nil
}

// kernelArgs is the guest kernel's command line; $LVSD_LAB_KERNEL_ARGS is
// appended (e.g. "loglevel=7" to see more on the console log).
func kernelArgs(a *Assets) string {
	args := "console=ttyS0 quiet panic=-1 rdinit=/init lvslab.moddir=" + a.ModulesDir
	if extra := os.Getenv("LVSD_LAB_KERNEL_ARGS"); extra != "" {
		args += " " + extra
	}
	return args
}

// ShellQuote quotes s for a POSIX shell.
func ShellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// stage2Script prepares the switched-to root and runs cmd.sh. It runs under
// the static busybox copied by init, for the same exec-cost reason.
func stage2Script(dir string, env []string) string {
	var b strings.Builder
	b.WriteString(`B=/.lvslab/busybox
$B mount -t tmpfs -o mode=0755 tmpfs /run
$B mkdir -p /dev/pts /dev/shm /run/netns
$B mount -t devpts devpts /dev/pts
$B mount -t tmpfs tmpfs /dev/shm
out=/dev/ttyS0 err=/dev/ttyS0
for p in /sys/class/virtio-ports/*; do
	read -r n <"$p/name"
	case "$n" in
	` + portOut + `) out="/dev/${p##*/}" ;;
	` + portErr + `) err="/dev/${p##*/}" ;;
	esac
done
exec >"$out" 2>"$err"
$B hostname lab
$B ip link set lo up
echo "` + markerReady + `"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 LVSD_LAB_VM=1
`)
	for _, e := range env {
		fmt.Fprintf(&b, "export %s\n", ShellQuote(e))
	}
	fmt.Fprintf(&b, "cd %s && /bin/sh %s/cmd.sh\n", ShellQuote(dir), guestIODir)
	b.WriteString(`echo $? >` + guestIODir + `/exit.tmp
$B mv ` + guestIODir + `/exit.tmp ` + guestIODir + `/exit
$B sync
$B poweroff -f
`)
	return b.String()
}

// Run boots the VM, runs spec.Script and powers off. The error is non-nil
// only when the VM itself failed (not when the script exited non-zero).
func Run(ctx context.Context, a *Assets, cacheDir string, spec Spec, log *slog.Logger) (*Result, error) {
	if spec.MemoryMB == 0 {
		spec.MemoryMB = 1024
	}
	if spec.CPUs == 0 {
		spec.CPUs = 2
	}
	if spec.Accel == "" {
		spec.Accel = ChooseAccel()
	}
	if spec.Dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, fmt.Errorf("working directory: %w", err)
		}
		spec.Dir = wd
	}
	if spec.Stdout == nil {
		spec.Stdout = io.Discard
	}
	if spec.Stderr == nil {
		spec.Stderr = io.Discard
	}
	if spec.BootTimeout == 0 {
		spec.BootTimeout = 3 * time.Minute
	}
	const attempts = 2
	for i := 1; ; i++ {
		res, err := runOnce(ctx, a, cacheDir, spec, log)
		if !errors.Is(err, errBootHung) || i == attempts {
			return res, err
		}
		log.Warn("VM boot hung; killed it, booting again", "attempt", i, "boot_timeout", spec.BootTimeout)
	}
}

// errBootHung means the guest never reached the script within BootTimeout.
var errBootHung = errors.New("VM boot hung")

func runOnce(ctx context.Context, a *Assets, cacheDir string, spec Spec, log *slog.Logger) (*Result, error) {
	runDir, err := newRunDir(cacheDir)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(runDir)
	ioDir := filepath.Join(runDir, "io")
	if err := os.Mkdir(ioDir, 0o755); err != nil {
		return nil, fmt.Errorf("create io share: %w", err)
	}
	files := map[string]string{
		"stage2.sh": stage2Script(spec.Dir, spec.Env),
		"cmd.sh":    spec.Script,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(ioDir, name), []byte(body), 0o755); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	args, err := qemuArgs(a, spec.Accel, spec.MemoryMB, spec.CPUs, runDir)
	if err != nil {
		return nil, err
	}
	res := &Result{Accel: spec.Accel, ExitCode: -1}
	start := time.Now()
	qctx, cancelQemu := context.WithCancel(ctx)
	defer cancelQemu()
	var mu sync.Mutex
	booted, hung := false, false
	watchdog := time.AfterFunc(spec.BootTimeout, func() {
		mu.Lock()
		defer mu.Unlock()
		if !booted {
			hung = true
			cancelQemu()
		}
	})
	defer watchdog.Stop()
	mark := func(m string) {
		mu.Lock()
		defer mu.Unlock()
		if m == markerReady && !hung {
			booted = true
			res.Boot = time.Since(start)
		}
	}
	outFifo, errFifo := filepath.Join(runDir, "out.fifo"), filepath.Join(runDir, "err.fifo")
	for _, f := range []string{outFifo, errFifo} {
		if err := syscall.Mkfifo(f, 0o600); err != nil {
			return nil, fmt.Errorf("mkfifo %s: %w", f, err)
		}
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); drainFifo(outFifo, &markerWriter{w: spec.Stdout, mark: mark}) }()
	go func() { defer readers.Done(); drainFifo(errFifo, spec.Stderr) }()

	log.Debug("starting qemu", "args", args)
	cpu, waitErr := runQemu(qctx, args)
	res.CPU = cpu
	res.Total = time.Since(start)
	// If qemu died before opening a FIFO, its reader is still blocked in
	// open(2); opening the write side releases it.
	for _, f := range []string{outFifo, errFifo} {
		if w, err := os.OpenFile(f, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	}
	readers.Wait()
	if ctx.Err() != nil {
		return res, fmt.Errorf("VM run: %w", ctx.Err())
	}
	mu.Lock()
	wasHung := hung
	mu.Unlock()
	if wasHung {
		return res, fmt.Errorf("%w: no ready signal after %s; console:\n%s", errBootHung, spec.BootTimeout, tail(filepath.Join(runDir, "console.log"), 20))
	}
	b, err := os.ReadFile(filepath.Join(ioDir, "exit"))
	if err != nil {
		return res, fmt.Errorf("VM ended without an exit status (qemu: %v); console:\n%s", waitErr, tail(filepath.Join(runDir, "console.log"), 40))
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return res, fmt.Errorf("VM exit status %q: %w", b, err)
	}
	res.ExitCode = code
	return res, nil
}

// runQemu starts qemu from a locked OS thread, because Pdeathsig fires when
// the creating thread exits: the thread must live as long as qemu does.
// qemu is killed when ctx ends or when this process dies.
func runQemu(ctx context.Context, args []string) (time.Duration, error) {
	type result struct {
		cpu time.Duration
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.Command("qemu-system-x86_64", args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			done <- result{err: fmt.Errorf("start qemu: %w", err)}
			return
		}
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		var err error
		select {
		case err = <-waited:
		case <-ctx.Done():
			cmd.Process.Kill()
			err = <-waited
		}
		if err != nil && stderr.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		var cpu time.Duration
		if ps := cmd.ProcessState; ps != nil {
			cpu = ps.UserTime() + ps.SystemTime()
		}
		done <- result{cpu, err}
	}()
	r := <-done
	return r.cpu, r.err
}

func drainFifo(path string, w io.Writer) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	io.Copy(w, f)
	if fl, ok := w.(interface{ Flush() }); ok {
		fl.Flush()
	}
}

// markerWriter forwards whole lines to w, except marker lines, which it
// reports through mark.
type markerWriter struct {
	w    io.Writer
	mark func(string)
	buf  []byte
}

func (m *markerWriter) Write(p []byte) (int, error) {
	m.buf = append(m.buf, p...)
	for {
		i := bytes.IndexByte(m.buf, '\n')
		if i < 0 {
			break
		}
		line := m.buf[:i+1]
		if t := strings.TrimSpace(string(line)); strings.HasPrefix(t, "@@lvslab:") && strings.HasSuffix(t, "@@") {
			m.mark(t)
		} else if _, err := m.w.Write(line); err != nil {
			return len(p), err
		}
		m.buf = m.buf[i+1:]
	}
	return len(p), nil
}

// Flush writes out a last line that had no newline.
func (m *markerWriter) Flush() {
	if len(m.buf) > 0 {
		m.w.Write(m.buf)
		m.buf = nil
	}
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no console log: %v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// InVM reports whether this process runs inside the lab VM.
func InVM() bool { return os.Getenv("LVSD_LAB_VM") == "1" }
