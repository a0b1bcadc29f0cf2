package suite

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLabPackagesPicksOnlyPackagesWithTaggedFiles(t *testing.T) {
	with := map[string]listed{
		"m/a": {ImportPath: "m/a", Dir: "/m/a", TestGoFiles: []string{"a_test.go", "a_lab_test.go"}},
		"m/b": {ImportPath: "m/b", Dir: "/m/b", TestGoFiles: []string{"b_test.go"}},
		"m/c": {ImportPath: "m/c", Dir: "/m/c", XTestGoFiles: []string{"c_lab_test.go"}},
		"m/d": {ImportPath: "m/d", Dir: "/m/d"},
	}
	without := map[string]listed{
		"m/a": {TestGoFiles: []string{"a_test.go"}},
		"m/b": {TestGoFiles: []string{"b_test.go"}},
		"m/c": {},
		"m/d": {},
	}
	got, err := labPackages(with, without, []string{"m/a", "m/b", "m/c", "m/d"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ImportPath != "m/a" || got[1].ImportPath != "m/c" || got[1].Dir != "/m/c" {
		t.Errorf("lab packages %+v, want m/a and m/c", got)
	}
	with["m/c"] = listed{ImportPath: "m/c", XTestGoFiles: []string{"c_lab_test.go"}, Error: &struct{ Err string }{"syntax error"}}
	if _, err := labPackages(with, without, []string{"m/c"}); err == nil || !strings.Contains(err.Error(), "m/c: syntax error") {
		t.Errorf("broken lab package: %v", err)
	}
}

func TestDecodeList(t *testing.T) {
	m, order, err := decodeList([]byte(`{"ImportPath":"x/a","Dir":"/a"}
{"ImportPath":"x/b","Dir":"/b","TestGoFiles":["t_test.go"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(order) != 2 || m["x/b"].TestGoFiles[0] != "t_test.go" {
		t.Errorf("decoded %v %v", order, m)
	}
	if _, _, err := decodeList([]byte(`{"ImportPath":`)); err == nil {
		t.Error("truncated go list output accepted")
	}
}

func TestScript(t *testing.T) {
	pkgs := []Package{{ImportPath: "m/a", Dir: "/src/m a", Binary: "/b/00-a.test"}}
	s, err := Script(pkgs, Options{Run: "TestX|TestY", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cd '/src/m a' && exec /b/00-a.test -test.v=true -test.run='TestX|TestY' -test.timeout=1m0s", beginMark + "m/a", endMark + "m/a $?"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if out, err := exec.Command("sh", "-n", "-c", s).CombinedOutput(); err != nil {
		t.Errorf("script does not parse: %v %s", err, out)
	}
	if _, err := Script(pkgs, Options{Run: "("}); err == nil || !strings.Contains(err.Error(), `-run "("`) {
		t.Errorf("bad -run: %v", err)
	}
}

func feed(r *Reporter, s string) {
	// Uneven chunks, as a pipe delivers them.
	for len(s) > 0 {
		n := 7
		if n > len(s) {
			n = len(s)
		}
		r.Write([]byte(s[:n]))
		s = s[n:]
	}
}

func TestReporterQuietShowsOnlyFailures(t *testing.T) {
	var out strings.Builder
	clock := time.Unix(0, 0)
	r := &Reporter{Out: &out, Now: func() time.Time { clock = clock.Add(time.Second); return clock }}
	feed(r, "boot noise\n"+
		beginMark+"m/a\n=== RUN   TestA\n    a_test.go:1: detail\n--- PASS: TestA (0.00s)\n    --- PASS: TestA/sub (0.00s)\n--- SKIP: TestS (0.00s)\nPASS\n"+endMark+"m/a 0\n"+
		beginMark+"m/b\n=== RUN   TestB\n--- FAIL: TestB (0.00s)\n    b_test.go:9: broken\nFAIL\n"+endMark+"m/b 1\n"+
		beginMark+"m/c\npanic: boom\n")
	r.Close()
	o := out.String()
	for _, want := range []string{"boot noise\n", "ok  \tm/a\t1.000s", "b_test.go:9: broken", "FAIL\tm/b", "panic: boom", "FAIL\tm/c"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q:\n%s", want, o)
		}
	}
	if strings.Contains(o, "detail") {
		t.Errorf("quiet output shows a passing test's log:\n%s", o)
	}
	res := r.Results()
	if len(res) != 3 || res[0].Passed != 1 || res[0].Skipped != 1 || res[1].Failed != 1 || res[2].ExitCode != -1 {
		t.Fatalf("results %+v", res)
	}
	expected := []Package{{ImportPath: "m/a"}, {ImportPath: "m/b"}, {ImportPath: "m/c"}}
	p, f, s, ok := Summary(expected, res)
	if p != 1 || f != 2 || s != 1 || ok {
		t.Errorf("summary %d passed %d failed %d skipped ok=%v; want 1 2 1 false", p, f, s, ok)
	}
}

func TestReporterVerboseAndMissingPackages(t *testing.T) {
	var out strings.Builder
	r := &Reporter{Out: &out, Verbose: true}
	feed(r, beginMark+"m/a\n    a_test.go:1: detail\n--- PASS: TestA (0.00s)\n"+endMark+"m/a 0\n")
	r.Close()
	if !strings.Contains(out.String(), "detail") {
		t.Errorf("verbose output lacks the log:\n%s", out.String())
	}
	_, _, _, ok := Summary([]Package{{ImportPath: "m/a"}}, r.Results())
	if !ok {
		t.Error("one passing package of one: not ok")
	}
	if _, _, _, ok := Summary([]Package{{ImportPath: "m/a"}, {ImportPath: "m/b"}}, r.Results()); ok {
		t.Error("a package that never ran counted as ok")
	}
}

// writeModule lays out a throwaway module with a good and a broken package,
// both with lab-tagged tests, and a package with plain tests only.
func writeModule(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":              "module example.com/m\n\ngo 1.22\n",
		"good/good.go":        "package good\n",
		"good/good_test.go":   "//go:build lab\n\npackage good\n\nimport \"testing\"\n\nfunc TestGood(t *testing.T) {}\n",
		"bad/bad.go":          "package bad\n",
		"bad/bad_test.go":     "//go:build lab\n\npackage bad\n\nfunc TestBad(t *testing.T) { undefined() }\n",
		"plain/plain.go":      "package plain\n",
		"plain/plain_test.go": "package plain\n\nimport \"testing\"\n\nfunc TestPlain(t *testing.T) {}\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindAndBuildKeepGoingPastABrokenPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles test binaries")
	}
	dir := writeModule(t)
	pkgs, err := Find(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pkgs {
		names = append(names, p.ImportPath)
	}
	if strings.Join(names, " ") != "example.com/m/bad example.com/m/good" {
		t.Fatalf("lab packages %v, want bad and good (not plain)", names)
	}
	var log strings.Builder
	ok, failed, err := Build(t.Context(), dir, t.TempDir(), pkgs, &log)
	if err != nil {
		t.Fatal(err)
	}
	if len(ok) != 1 || ok[0].ImportPath != "example.com/m/good" || ok[0].Binary == "" {
		t.Errorf("built %+v, want good only", ok)
	}
	if len(failed) != 1 || failed[0].ImportPath != "example.com/m/bad" {
		t.Errorf("failed %+v, want bad", failed)
	}
	if !strings.Contains(log.String(), "undefined") || !strings.Contains(log.String(), "FAIL\texample.com/m/bad") {
		t.Errorf("build log lacks the compiler error and FAIL line:\n%s", log.String())
	}
	if _, err := os.Stat(ok[0].Binary); err != nil {
		t.Errorf("binary of good: %v", err)
	}
}
