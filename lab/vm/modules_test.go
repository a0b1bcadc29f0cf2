package vm

import (
	"reflect"
	"strings"
	"testing"
)

const testDep = `kernel/fs/overlayfs/overlay.ko:
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko
kernel/net/netfilter/ipvs/ip_vs.ko:
kernel/net/netfilter/ipvs/ip_vs_ftp.ko: kernel/net/netfilter/ipvs/ip_vs.ko
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
`

func TestLoadOrderPutsDepsFirst(t *testing.T) {
	ix, err := parseModules(strings.NewReader(testDep), strings.NewReader("kernel/crypto/crc32c.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ix.loadOrder([]string{"9pnet_virtio", "9p", "overlay", "crc32c"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range got {
		pos[modName(p)] = i
	}
	if len(got) != 8 {
		t.Fatalf("want 8 modules (each once, builtin crc32c skipped), got %d: %v", len(got), got)
	}
	for mod, deps := range ix.deps {
		if _, ok := pos[mod]; !ok {
			continue
		}
		for _, d := range deps {
			if pos[d] > pos[mod] {
				t.Errorf("%s loaded before its dependency %s: %v", mod, d, got)
			}
		}
	}
}

func TestLoadOrderErrors(t *testing.T) {
	ix, err := parseModules(strings.NewReader(testDep), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ix.loadOrder([]string{"nosuch"}); err == nil || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Errorf("unknown module: got %v, want an error naming it", err)
	}
	if _, err := ix.loadOrder([]string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: got %v, want a cycle error", err)
	}
	if _, err := parseModules(strings.NewReader("garbage line\n"), nil); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad modules.dep: got %v, want an error naming line 1", err)
	}
}

func TestMatching(t *testing.T) {
	ix, err := parseModules(strings.NewReader(testDep), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := ix.matching([]string{"ip_vs"}, map[string]bool{"ip_vs_ftp": true})
	if want := []string{"ip_vs", "ip_vs_rr"}; !reflect.DeepEqual(got, want) {
		t.Errorf("matching: got %v, want %v", got, want)
	}
}

func TestModName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/net/9p/9pnet_virtio.ko": "9pnet_virtio",
		"kernel/x/foo-bar.ko.xz":        "foo_bar",
		"kernel/x/zst.ko.zst":           "zst",
	} {
		if got := modName(in); got != want {
			t.Errorf("modName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStripModuleSignature(t *testing.T) {
	mod := []byte("\x7fELF module body")
	sig := []byte("PKCS7-signature-bytes")
	info := []byte{0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, byte(len(sig))}
	signed := append(append(append(append([]byte{}, mod...), sig...), info...), modSigMagic...)
	got, err := stripModuleSignature(signed)
	if err != nil || string(got) != string(mod) {
		t.Errorf("stripped to %q, %v; want %q", got, err, mod)
	}
	if got, err := stripModuleSignature(mod); err != nil || string(got) != string(mod) {
		t.Errorf("unsigned module changed: %q, %v", got, err)
	}
	bad := append(append([]byte("x"), []byte{0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0}...), modSigMagic...)
	if _, err := stripModuleSignature(bad); err == nil || !strings.Contains(err.Error(), "exceed") {
		t.Errorf("corrupt signature lengths: %v", err)
	}
}
