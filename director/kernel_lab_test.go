//go:build lab

package director_test

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/lvsd/lvsd/lab/topo"
	"github.com/lvsd/lvsd/lab/vm"
)

// TestKernelEditsForwardingMethodInPlace backs the diff's choice of
// update-dest (IPVS_CMD_SET_DEST) for a forwarding-method change: the kernel
// accepts the edit of an existing destination and reports the new method,
// with weight and thresholds changed in the same call.
func TestKernelEditsForwardingMethodInPlace(t *testing.T) {
	if !vm.InVM() {
		t.Skip("needs the lab VM (IPVS): go run ./cmd/lvslab test ./director")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tp := topo.New(t)
	dir := tp.Host("dir", "198.18.0.1/24")
	ipvsadm := func(args ...string) string {
		t.Helper()
		out, err := dir.Run(ctx, "ipvsadm", args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ipvsadm("-A", "-t", "198.18.1.100:80", "-s", "wrr")
	ipvsadm("-a", "-t", "198.18.1.100:80", "-r", "198.18.0.21:80", "-g", "-w", "1")
	steps := []struct {
		args       []string
		line       string
		thresholds string
	}{
		{[]string{"-m", "-w", "2"}, `->\s+198\.18\.0\.21:80\s+Masq\s+2\s`, `->\s+198\.18\.0\.21:80\s+0\s+0\s`},
		{[]string{"-i", "-w", "3", "-x", "100", "-y", "10"}, `->\s+198\.18\.0\.21:80\s+Tunnel\s+3\s`, `->\s+198\.18\.0\.21:80\s+100\s+10\s`},
		{[]string{"-g", "-w", "0"}, `->\s+198\.18\.0\.21:80\s+Route\s+0\s`, `->\s+198\.18\.0\.21:80\s+0\s+0\s`},
	}
	for _, s := range steps {
		// ipvsadm -e sends the whole destination in one IPVS_CMD_SET_DEST.
		ipvsadm(append([]string{"-e", "-t", "198.18.1.100:80", "-r", "198.18.0.21:80"}, s.args...)...)
		if out := ipvsadm("-Ln"); !regexp.MustCompile(s.line).MatchString(out) {
			t.Fatalf("after -e %v, ipvsadm -Ln lacks %s:\n%s", s.args, s.line, out)
		}
		if out := ipvsadm("-Ln", "--thresholds"); !regexp.MustCompile(s.thresholds).MatchString(out) {
			t.Fatalf("after -e %v, ipvsadm -Ln --thresholds lacks %s:\n%s", s.args, s.thresholds, out)
		}
	}
}
