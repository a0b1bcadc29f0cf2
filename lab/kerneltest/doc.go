// Package kerneltest holds the lab's own real-kernel tests (build tag lab):
// they prove the facts about IPVS that lvsd relies on, inside the qemu VM
// started by `go run ./cmd/lvslab test ./lab/...`.
package kerneltest
