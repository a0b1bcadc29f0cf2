package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/lvsd/lvsd/internal/atomicfile"
	"github.com/lvsd/lvsd/vrrp"
)

// groupOverride is an operator's standing demote or promote of one VIP
// group on this director. It is kept in state_dir/overrides.json so that a
// director demoted before patching does not take the VIP back when it
// reboots; only `lvsctl clear GROUP` ends it.
type groupOverride struct {
	Override string    `json:"override"` // "demote" or "promote"
	Since    time.Time `json:"since"`
}

type overridesFile struct {
	Format int                      `json:"format"`
	Groups map[string]groupOverride `json:"groups"`
}

func overridesPath(stateDir string) string { return filepath.Join(stateDir, "overrides.json") }

func parseOverride(s string) (vrrp.Override, bool) {
	switch s {
	case "demote":
		return vrrp.OverrideDemote, true
	case "promote":
		return vrrp.OverridePromote, true
	}
	return vrrp.OverrideNone, false
}

// loadOverrides reads the file (missing: none). A damaged file is an error
// naming it: starting without a standing demote could take the VIP back.
func loadOverrides(path string) (map[string]groupOverride, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]groupOverride{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read VIP group overrides: %w", err)
	}
	var f overridesFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("VIP group overrides %s: %w (fix or remove the file; `lvsctl demote` recreates it)", path, err)
	}
	if f.Format != 1 {
		return nil, fmt.Errorf("VIP group overrides %s: unsupported format %d", path, f.Format)
	}
	for _, g := range slices.Sorted(maps.Keys(f.Groups)) {
		if _, ok := parseOverride(f.Groups[g].Override); !ok {
			return nil, fmt.Errorf("VIP group overrides %s: group %q: unknown override %q (want demote or promote)", path, g, f.Groups[g].Override)
		}
	}
	if f.Groups == nil {
		f.Groups = map[string]groupOverride{}
	}
	return f.Groups, nil
}

func saveOverrides(path string, groups map[string]groupOverride) error {
	data, err := json.MarshalIndent(overridesFile{Format: 1, Groups: groups}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode VIP group overrides: %w", err)
	}
	if err := atomicfile.Write(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("persist VIP group overrides: %w", err)
	}
	return nil
}
