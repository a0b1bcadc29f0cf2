// Package suite finds the packages that have lab-tagged tests, compiles
// their test binaries, writes the guest script that runs them in one VM boot,
// and turns the guest's output back into go-test-like results.
package suite

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lvsd/lvsd/lab/vm"
)

// Tag is the build tag that marks tests needing the real kernel.
const Tag = "lab"

// Package is one package with lab-tagged tests.
type Package struct {
	ImportPath string
	Dir        string
	Binary     string // set by Build
}

type listed struct {
	ImportPath   string
	Dir          string
	TestGoFiles  []string
	XTestGoFiles []string
	Error        *struct{ Err string }
}

// listPackages runs go list with or without the lab tag.
func listPackages(ctx context.Context, dir string, patterns []string, tags bool) (map[string]listed, []string, error) {
	args := []string{"list", "-e", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles,Error"}
	if tags {
		args = append(args, "-tags", Tag)
	}
	args = append(args, patterns...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, nil, fmt.Errorf("go list %s: %w: %s", strings.Join(patterns, " "), err, stderr.Bytes())
	}
	return decodeList(out)
}

func decodeList(out []byte) (map[string]listed, []string, error) {
	m := map[string]listed{}
	var order []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, nil, fmt.Errorf("decode go list output: %w", err)
		}
		m[p.ImportPath] = p
		order = append(order, p.ImportPath)
	}
	return m, order, nil
}

// labPackages picks the packages whose test files differ with the lab tag.
func labPackages(with, without map[string]listed, order []string) ([]Package, error) {
	var pkgs []Package
	for _, ip := range order {
		p := with[ip]
		files := append(append([]string{}, p.TestGoFiles...), p.XTestGoFiles...)
		base := without[ip]
		plain := append(append([]string{}, base.TestGoFiles...), base.XTestGoFiles...)
		extra := false
		for _, f := range files {
			if !slices.Contains(plain, f) {
				extra = true
			}
		}
		if !extra {
			continue
		}
		if p.Error != nil {
			return nil, fmt.Errorf("package %s: %s", ip, p.Error.Err)
		}
		pkgs = append(pkgs, Package{ImportPath: ip, Dir: p.Dir})
	}
	return pkgs, nil
}

// Find lists the packages matched by patterns (relative to dir) that have
// test files built only with the lab tag.
func Find(ctx context.Context, dir string, patterns []string) ([]Package, error) {
	if len(patterns) == 0 {
		patterns = []string{"./..."}
	}
	with, order, err := listPackages(ctx, dir, patterns, true)
	if err != nil {
		return nil, err
	}
	without, _, err := listPackages(ctx, dir, patterns, false)
	if err != nil {
		return nil, err
	}
	return labPackages(with, without, order)
}

// Build compiles each package's lab test binary into outDir. Packages that
// fail to compile are reported to stderr and returned as failed; the
// others are returned ready to run, so one broken package does not hide
// the results of the rest.
func Build(ctx context.Context, dir, outDir string, pkgs []Package, stderr io.Writer) (ok []Package, failed []PackageResult, err error) {
	for i, p := range pkgs {
		bin := filepath.Join(outDir, fmt.Sprintf("%02d-%s.test", i, filepath.Base(p.ImportPath)))
		cmd := exec.CommandContext(ctx, "go", "test", "-c", "-tags", Tag, "-o", bin, p.ImportPath)
		cmd.Dir = dir
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if rerr := cmd.Run(); rerr != nil {
			if ctx.Err() != nil {
				return nil, nil, fmt.Errorf("compile lab tests of %s: %w", p.ImportPath, ctx.Err())
			}
			stderr.Write(out.Bytes())
			fmt.Fprintf(stderr, "FAIL\t%s [lab build failed: %v]\n", p.ImportPath, rerr)
			failed = append(failed, PackageResult{ImportPath: p.ImportPath, ExitCode: -1, Failed: 1})
			continue
		}
		p.Binary = bin
		ok = append(ok, p)
	}
	return ok, failed, nil
}

// Options are what `lvslab test` passes to each test binary.
type Options struct {
	Run     string // -test.run
	Verbose bool
	Timeout time.Duration // -test.timeout; 0 = none
}

// Markers the guest script prints around each package's run.
const (
	beginMark = "### lvslab-begin "
	endMark   = "### lvslab-end "
)

// Script is the guest shell script that runs each binary in its package's
// directory (as go test does) with LVSD_LAB_VM=1. It always asks for -test.v
// so the host can count tests; the host hides the detail unless Verbose.
func Script(pkgs []Package, o Options) (string, error) {
	if o.Run != "" {
		if _, err := regexp.Compile(o.Run); err != nil {
			return "", fmt.Errorf("-run %q: %w", o.Run, err)
		}
	}
	var b strings.Builder
	b.WriteString("export LVSD_LAB_VM=1\n")
	for _, p := range pkgs {
		args := []string{vm.ShellQuote(p.Binary), "-test.v=true"}
		if o.Run != "" {
			args = append(args, "-test.run="+vm.ShellQuote(o.Run))
		}
		if o.Timeout > 0 {
			args = append(args, "-test.timeout="+o.Timeout.String())
		}
		fmt.Fprintf(&b, "echo %s\n", vm.ShellQuote(beginMark+p.ImportPath))
		fmt.Fprintf(&b, "(cd %s && exec %s) 2>&1\n", vm.ShellQuote(p.Dir), strings.Join(args, " "))
		fmt.Fprintf(&b, "echo \"%s%s $?\"\n", endMark, p.ImportPath)
	}
	return b.String(), nil
}

// PackageResult is one package's outcome.
type PackageResult struct {
	ImportPath              string
	ExitCode                int // -1: never finished (VM died or timed out)
	Passed, Failed, Skipped int
	Duration                time.Duration
}

// Reporter consumes the guest's output (it is an io.Writer) and prints
// go-test-like lines to Out: everything when Verbose, otherwise a package's
// output only when it failed, and an ok/FAIL line per package.
type Reporter struct {
	Out     io.Writer
	Verbose bool
	Now     func() time.Time // for tests; defaults to time.Now

	mu      sync.Mutex
	partial []byte
	cur     *PackageResult
	start   time.Time
	buf     bytes.Buffer
	results []PackageResult
}

func (r *Reporter) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Reporter) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.partial = append(r.partial, p...)
	for {
		i := bytes.IndexByte(r.partial, '\n')
		if i < 0 {
			break
		}
		r.line(string(r.partial[:i+1]))
		r.partial = r.partial[i+1:]
	}
	return len(p), nil
}

func (r *Reporter) line(l string) {
	t := strings.TrimRight(l, "\r\n")
	if ip, ok := strings.CutPrefix(t, beginMark); ok {
		r.cur = &PackageResult{ImportPath: ip, ExitCode: -1}
		r.start = r.now()
		r.buf.Reset()
		return
	}
	if rest, ok := strings.CutPrefix(t, endMark); ok && r.cur != nil {
		f := strings.Fields(rest)
		if len(f) == 2 && f[0] == r.cur.ImportPath {
			code, err := strconv.Atoi(f[1])
			if err != nil {
				code = 255
			}
			r.finish(code)
			return
		}
	}
	if r.cur == nil {
		io.WriteString(r.Out, l)
		return
	}
	switch {
	case strings.HasPrefix(t, "--- PASS: "):
		r.cur.Passed++
	case strings.HasPrefix(t, "--- FAIL: "):
		r.cur.Failed++
	case strings.HasPrefix(t, "--- SKIP: "):
		r.cur.Skipped++
	}
	if r.Verbose {
		io.WriteString(r.Out, l)
	} else {
		r.buf.WriteString(l)
	}
}

func (r *Reporter) finish(code int) {
	c := r.cur
	c.ExitCode = code
	c.Duration = r.now().Sub(r.start)
	if code != 0 && !r.Verbose {
		r.Out.Write(r.buf.Bytes())
	}
	if code == 0 {
		fmt.Fprintf(r.Out, "ok  \t%s\t%.3fs\t(in VM)\n", c.ImportPath, c.Duration.Seconds())
	} else {
		fmt.Fprintf(r.Out, "FAIL\t%s\t%.3fs\t(in VM, exit %d)\n", c.ImportPath, c.Duration.Seconds(), code)
	}
	r.results = append(r.results, *c)
	r.cur = nil
	r.buf.Reset()
}

// Close ends the stream: a package still running when the output stopped
// is reported as failed, with whatever it printed.
func (r *Reporter) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.partial) > 0 {
		r.line(string(r.partial) + "\n")
		r.partial = nil
	}
	if r.cur != nil {
		r.Out.Write(r.buf.Bytes())
		c := *r.cur
		c.Duration = r.now().Sub(r.start)
		fmt.Fprintf(r.Out, "FAIL\t%s\t%.3fs\t(in VM: output ended before the test binary did)\n", c.ImportPath, c.Duration.Seconds())
		r.results = append(r.results, c)
		r.cur = nil
	}
}

// Results returns the finished packages in order.
func (r *Reporter) Results() []PackageResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.results)
}

// Summary totals results and says whether all expected packages passed.
func Summary(expected []Package, results []PackageResult) (passed, failed, skipped int, ok bool) {
	ok = len(results) == len(expected)
	for _, r := range results {
		passed += r.Passed
		failed += r.Failed
		skipped += r.Skipped
		if r.ExitCode != 0 {
			ok = false
			if r.Failed == 0 {
				failed++ // a crash or a build/flag error, counted once
			}
		}
	}
	return passed, failed, skipped, ok
}
