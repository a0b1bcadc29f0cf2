// Package systemd holds lvsd's unit files; this test verifies them.
package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnitsVerify runs systemd-analyze verify on the shipped units. The
// ExecStart binary is pointed at a stand-in, because verify requires the
// executable to exist and lvsd is not installed on the test machine.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "lvsd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, name := range []string{"lvsd.service", "lvsd-witness.service"} {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		text := string(data)
		for _, want := range []string{"Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=", "ProtectSystem=strict"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s lacks %s", name, want)
			}
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(text, "/usr/sbin/lvsd", bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestServiceCapabilitiesAreMinimal(t *testing.T) {
	data, err := os.ReadFile("lvsd.service")
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"CAP_NET_ADMIN": true, "CAP_NET_RAW": true, "CAP_NET_BIND_SERVICE": true, "CAP_SYS_NICE": true}
	found := false
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || (k != "CapabilityBoundingSet" && k != "AmbientCapabilities") {
			continue
		}
		found = true
		for _, c := range strings.Fields(v) {
			if !allowed[c] {
				t.Errorf("%s grants %s, which lvsd does not need", k, c)
			}
		}
	}
	if !found {
		t.Fatal("lvsd.service does not restrict capabilities")
	}
}
