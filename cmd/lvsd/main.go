// Command lvsd is the IPVS high-availability director; see package daemon.
package main

import (
	"os"

	"github.com/lvsd/lvsd/daemon"
)

func main() { os.Exit(daemon.Main(os.Args[1:], os.Stdout, os.Stderr)) }
