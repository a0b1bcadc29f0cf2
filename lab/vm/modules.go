package vm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// modIndex is what depmod wrote: each module's path (relative to the module
// tree) and the modules it depends on.
type modIndex struct {
	path    map[string]string   // name -> relative path
	deps    map[string][]string // name -> names of direct and indirect deps
	builtin map[string]bool
}

// modName turns "kernel/net/9p/9pnet_virtio.ko" into "9pnet_virtio". Dashes
// and underscores are the same to the kernel; we keep underscores.
func modName(p string) string {
	b := path.Base(p)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if s, ok := strings.CutSuffix(b, ext); ok {
			b = s
			break
		}
	}
	return strings.ReplaceAll(b, "-", "_")
}

// parseModules reads modules.dep and, when given, modules.builtin.
func parseModules(dep, builtin io.Reader) (*modIndex, error) {
	ix := &modIndex{path: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		t := strings.TrimSpace(sc.Text())
		if t == "" {
			continue
		}
		mod, rest, ok := strings.Cut(t, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: no ':' in %q", line, t)
		}
		n := modName(mod)
		ix.path[n] = mod
		for _, d := range strings.Fields(rest) {
			ix.deps[n] = append(ix.deps[n], modName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	if builtin != nil {
		sc := bufio.NewScanner(builtin)
		for sc.Scan() {
			if t := strings.TrimSpace(sc.Text()); t != "" {
				ix.builtin[modName(t)] = true
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read modules.builtin: %w", err)
		}
	}
	return ix, nil
}

// loadOrder returns the paths of want and everything they need, each module
// after all of its dependencies. Built-in modules are skipped; unknown ones
// are an error.
func (ix *modIndex) loadOrder(want []string) ([]string, error) {
	var out []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string, chain []string) error
	visit = func(n string, chain []string) error {
		n = strings.ReplaceAll(n, "-", "_")
		switch state[n] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, n), " -> "))
		}
		p, ok := ix.path[n]
		if !ok {
			if ix.builtin[n] {
				state[n] = 2
				return nil
			}
			return fmt.Errorf("module %q (needed by %s) is neither in modules.dep nor built in", n, strings.Join(append(chain, "request"), " <- "))
		}
		state[n] = 1
		deps := append([]string(nil), ix.deps[n]...)
		sort.Strings(deps) // deterministic output
		for _, d := range deps {
			if err := visit(d, append(chain, n)); err != nil {
				return err
			}
		}
		state[n] = 2
		out = append(out, p)
		return nil
	}
	for _, w := range want {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// matching returns the names of all modules whose name has one of prefixes,
// minus those in skip, sorted.
func (ix *modIndex) matching(prefixes []string, skip map[string]bool) []string {
	var out []string
	for n := range ix.path {
		if skip[n] {
			continue
		}
		for _, p := range prefixes {
			if strings.HasPrefix(n, p) {
				out = append(out, n)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// modSigMagic ends a signed kernel module.
const modSigMagic = "~Module signature appended~\n"

// stripModuleSignature removes the appended signature of a kernel module, if
// any. Under TCG, checking each module's signature is a large share of the
// boot; an unsigned module loads all the same (the kernel only marks itself
// tainted), as Debian does not enforce signatures without Secure Boot.
// Layout: module, signature, struct module_signature (12 bytes, sig_len
// big-endian in the last 4), magic.
func stripModuleSignature(b []byte) ([]byte, error) {
	if !bytes.HasSuffix(b, []byte(modSigMagic)) {
		return b, nil
	}
	end := len(b) - len(modSigMagic)
	if end < 12 {
		return nil, fmt.Errorf("module signature: file too short (%d bytes)", len(b))
	}
	info := b[end-12 : end]
	signerLen, keyIDLen := int(info[3]), int(info[4])
	sigLen := int(binary.BigEndian.Uint32(info[8:12]))
	cut := end - 12 - sigLen - signerLen - keyIDLen
	if cut < 0 {
		return nil, fmt.Errorf("module signature: lengths (%d+%d+%d) exceed the file", sigLen, signerLen, keyIDLen)
	}
	return b[:cut], nil
}
