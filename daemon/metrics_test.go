package daemon

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/lvsd/lvsd/config"
)

// TestReloadNamesMetricsKeys: [metrics] needs a restart; the reload report
// names the keys that changed.
func TestReloadNamesMetricsKeys(t *testing.T) {
	base := config.Metrics{Listen: netip.MustParseAddrPort("127.0.0.1:9120"), PerBackend: true}
	for _, tc := range []struct {
		to   config.Metrics
		want []string
	}{
		{base, nil},
		{config.Metrics{Listen: base.Listen}, []string{"[metrics] per_backend"}},
		{config.Metrics{Listen: netip.MustParseAddrPort("127.0.0.1:9121"), PerBackend: true}, []string{"[metrics] listen"}},
		{config.Metrics{}, []string{"[metrics] listen per_backend"}},
	} {
		got := restartOnly(&config.Config{Metrics: base}, &config.Config{Metrics: tc.to})
		if !slices.Equal(got, tc.want) {
			t.Errorf("%+v -> %+v: restart-only %q, want %q", base, tc.to, got, tc.want)
		}
	}
}
