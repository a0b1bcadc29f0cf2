package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestQemuArgs(t *testing.T) {
	a := &Assets{Vmlinux: "/c/vmlinux", Initramfs: "/c/i.cpio", ModulesDir: "/c/lib/modules/v"}
	args, err := qemuArgs(a, "tcg", 512, 2, "/r")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-accel tcg,thread=multi -cpu max", "-smp 2 -m 512", "-kernel /c/vmlinux", "-initrd /c/i.cpio",
		"lvslab.moddir=/c/lib/modules/v", "-no-reboot",
		"local,path=/,mount_tag=" + tagHostRoot + ",security_model=none,readonly=on",
		"local,path=/r/io,mount_tag=" + tagIO,
		"file,id=out,path=/r/out.fifo", "nr=1,chardev=out,name=" + portOut,
		"file,id=err,path=/r/err.fifo", "nr=2,chardev=err,name=" + portErr,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("qemu args lack %q:\n%s", want, joined)
		}
	}
	if k, _ := qemuArgs(a, "kvm", 512, 1, "/r"); !strings.Contains(strings.Join(k, " "), "-accel kvm -cpu host") {
		t.Errorf("kvm args: %v", k)
	}
	for _, bad := range []struct {
		accel    string
		mem, cpu int
		want     string
	}{
		{"hvf", 512, 1, `accelerator "hvf"`},
		{"tcg", 64, 1, "guest memory 64 MB"},
		{"tcg", 512, 0, "guest CPUs 0"},
	} {
		if _, err := qemuArgs(a, bad.accel, bad.mem, bad.cpu, "/r"); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("qemuArgs(%q,%d,%d): %v, want error with %q", bad.accel, bad.mem, bad.cpu, err, bad.want)
		}
	}
}

func TestChooseAccelHonoursEnv(t *testing.T) {
	t.Setenv("LVSD_LAB_ACCEL", "kvm")
	if got := ChooseAccel(); got != "kvm" {
		t.Errorf("ChooseAccel with LVSD_LAB_ACCEL=kvm = %q", got)
	}
	t.Setenv("LVSD_LAB_ACCEL", "")
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		if got := ChooseAccel(); got != "tcg" {
			t.Errorf("with kvm_pvm loaded ChooseAccel = %q, want tcg", got)
		}
	}
}

// The scripts are run by a POSIX shell; a syntax error would only show up
// as a VM that never reports, so check them with sh -n here.
func TestScriptsParse(t *testing.T) {
	for name, s := range map[string]string{
		"init":   initScript,
		"stage2": stage2Script("/a dir/with 'quotes'", []string{"X=1", "Y=two words"}),
	} {
		cmd := exec.Command("sh", "-n")
		cmd.Stdin = strings.NewReader(s)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s script does not parse: %v\n%s", name, err, out)
		}
	}
	s := stage2Script("/a dir/with 'quotes'", []string{"Y=two words"})
	for _, want := range []string{`cd '/a dir/with '\''quotes'\''' && /bin/sh /lvslab-io/cmd.sh`, "LVSD_LAB_VM=1", `export 'Y=two words'`, markerReady, "poweroff -f"} {
		if !strings.Contains(s, want) {
			t.Errorf("stage2 lacks %q:\n%s", want, s)
		}
	}
}

func TestShellQuoteRoundTrips(t *testing.T) {
	for _, in := range []string{"plain", "", "two words", "it's", `$HOME "x" \n`, "a\nb"} {
		out, err := exec.Command("sh", "-c", "printf %s "+ShellQuote(in)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != in {
			t.Errorf("ShellQuote(%q) came back as %q", in, out)
		}
	}
}

func TestMarkerWriterStripsMarkers(t *testing.T) {
	var out bytes.Buffer
	var marks []string
	m := &markerWriter{w: &out, mark: func(s string) { marks = append(marks, s) }}
	for _, chunk := range []string{"hel", "lo\n@@lvslab:re", "ady@@\nwor", "ld\ntail"} {
		m.Write([]byte(chunk))
	}
	m.Flush()
	if out.String() != "hello\nworld\ntail" {
		t.Errorf("forwarded %q", out.String())
	}
	if !reflect.DeepEqual(marks, []string{markerReady}) {
		t.Errorf("marks %v", marks)
	}
}

func TestParseMissing(t *testing.T) {
	out := []byte("qemu-system-x86 ii \nbusybox-static rc \ncurl:amd64 ii \n")
	got := parseMissing([]string{"qemu-system-x86", "busybox-static", "curl", "kmod"}, out)
	if want := []string{"busybox-static", "kmod"}; !reflect.DeepEqual(got, want) {
		t.Errorf("missing %v, want %v", got, want)
	}
}

func TestParseKernelDepends(t *testing.T) {
	out := []byte("linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n  Recommends: firmware\n")
	if got := parseKernelDepends(out); got != "linux-image-6.1.0-56-amd64" {
		t.Errorf("got %q", got)
	}
	if got := parseKernelDepends([]byte("linux-image-amd64\n  Depends: <linux-image>\n")); got != "" {
		t.Errorf("virtual package accepted: %q", got)
	}
}

func TestExtractVmlinuxFindsPayload(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz not installed")
	}
	dir := t.TempDir()
	elf := append([]byte("\x7fELF"), bytes.Repeat([]byte("kernel"), 1000)...)
	cmd := exec.Command("xz", "-c", "--format=xz")
	cmd.Stdin = bytes.NewReader(elf)
	xz, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	img := append(append([]byte("bzImage header junk"), xz...), []byte("trailing junk after the stream")...)
	src := filepath.Join(dir, "vmlinuz")
	os.WriteFile(src, img, 0o644)
	dst := filepath.Join(dir, "vmlinux")
	if err := extractVmlinux(t.Context(), src, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, elf) {
		t.Errorf("extracted %d bytes, want the %d-byte ELF", len(got), len(elf))
	}
	os.WriteFile(src, []byte("no payload here"), 0o644)
	if err := extractVmlinux(t.Context(), src, dst); err == nil || !strings.Contains(err.Error(), "no xz payload") {
		t.Errorf("image without payload: %v", err)
	}
}

func TestRunDirsOfDeadProcessesAreSwept(t *testing.T) {
	cache := t.TempDir()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	runs := filepath.Join(cache, "runs")
	dead := filepath.Join(runs, "run-"+itoa(cmd.Process.Pid)+"-x")
	os.MkdirAll(dead, 0o755)
	mine, err := NewRunDir(cache)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(mine), "run-"+itoa(os.Getpid())+"-") {
		t.Errorf("run dir %s not named after this process", mine)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) && !pidAlive(cmd.Process.Pid) {
		t.Errorf("dead run's directory survived: %v", err)
	}
	if _, err := NewRunDir(cache); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("live run's directory was swept: %v", err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockCache(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	// A second process must wait; we give it a short deadline via a child
	// using flock(1) in non-blocking mode.
	if _, err := exec.LookPath("flock"); err == nil {
		if err := exec.Command("flock", "-n", filepath.Join(dir, "lock"), "true").Run(); err == nil {
			t.Error("a second locker got the cache lock while it was held")
		}
	}
	unlock()
	if _, err := exec.LookPath("flock"); err == nil {
		if err := exec.Command("flock", "-n", filepath.Join(dir, "lock"), "true").Run(); err != nil {
			t.Errorf("lock not released: %v", err)
		}
	}
}
