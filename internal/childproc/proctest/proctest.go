// Package proctest helps tests check that processes started through
// childproc are gone, reading /proc (zombies count as gone).
package proctest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stat returns the fields of /proc/PID/stat after the command name (the
// first is the state, field 3), or nil if the process does not exist.
func stat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	f := stat(pid)
	return len(f) > 0 && f[0] != "Z"
}

// GroupMembers lists the live (not zombie) processes in process group pgid.
func GroupMembers(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// f[0] state (field 3), f[2] pgrp (field 5)
		if f := stat(pid); len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// WaitGroupGone fails t unless, within d, no live process is left in group
// pgid and none of pids is alive.
func WaitGroupGone(t testing.TB, d time.Duration, pgid int, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := GroupMembers(pgid)
		for _, p := range pids {
			if Alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes of group %d still running after %v: %v", pgid, d, left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
