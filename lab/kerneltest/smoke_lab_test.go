//go:build lab

package kerneltest

import (
	"os"
	"strings"
	"testing"

	"github.com/moby/ipvs"
)

// requireVM fails (never skips) outside the VM: lab tests are only compiled
// with the lab tag, which only lvslab uses.
func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("LVSD_LAB_VM") != "1" {
		t.Fatal("lab test outside the lab VM: run it with `go run ./cmd/lvslab test`")
	}
}

func TestKernelHasIPVS(t *testing.T) {
	requireVM(t)
	b, err := os.ReadFile("/proc/net/ip_vs")
	if err != nil {
		t.Fatalf("IPVS missing in the VM kernel: %v", err)
	}
	if !strings.Contains(string(b), "IP Virtual Server version") {
		t.Fatalf("/proc/net/ip_vs has no version header: %q", b)
	}
	h, err := ipvs.New("")
	if err != nil {
		t.Fatalf("open IPVS generic netlink: %v", err)
	}
	defer h.Close()
	if _, err := h.GetServices(); err != nil {
		t.Fatalf("list services: %v", err)
	}
}
