package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"

	"github.com/lvsd/lvsd/lab/suite"
	"github.com/lvsd/lvsd/lab/vm"
)

func cmdTest(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	start := time.Now()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f vmFlags
	f.register(fs)
	runRE := fs.String("run", "", "run only tests matching this regular expression (-test.run)")
	verbose := fs.Bool("v", false, "verbose: stream every test's output (-test.v)")
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	wd, err := os.Getwd()
	if err != nil {
		return 1, err
	}
	pkgs, err := suite.Find(ctx, wd, fs.Args())
	if err != nil {
		return 1, err
	}
	if len(pkgs) == 0 {
		fmt.Fprintf(stdout, "lvslab: no packages with %q-tagged tests in %q\n", suite.Tag, fs.Args())
		return 0, nil
	}
	buildDir, err := vm.NewRunDir(vm.CacheDir())
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(buildDir)
	if *runRE != "" {
		if _, err := regexp.Compile(*runRE); err != nil {
			return 2, fmt.Errorf("-run %q: %w", *runRE, err)
		}
	}
	built, broken, err := suite.Build(ctx, wd, buildDir, pkgs, stdout)
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(stderr, "lvslab: compiled %d of %d lab test binaries in %.1fs\n", len(built), len(pkgs), time.Since(start).Seconds())
	rep := &suite.Reporter{Out: stdout, Verbose: *verbose}
	var bootErr error
	if len(built) > 0 {
		script, err := suite.Script(built, suite.Options{Run: *runRE, Verbose: *verbose, Timeout: f.timeout})
		if err != nil {
			return 2, err
		}
		_, bootErr = boot(ctx, f, script, nil, rep, stderr)
	}
	rep.Close()
	passed, failed, skipped, ok := suite.Summary(built, rep.Results())
	if len(broken) > 0 {
		ok = false
		failed += len(broken)
	}
	fmt.Fprintf(stdout, "lvslab: lab suite took %.1fs\n", time.Since(start).Seconds())
	fmt.Fprintf(stdout, "lab: %d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if bootErr != nil {
		return 1, bootErr
	}
	if !ok {
		return 1, nil
	}
	return 0, nil
}
