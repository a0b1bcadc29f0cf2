package config

import (
	"fmt"
	"strings"
)

// serviceFile generates services [file*perFile, (file+1)*perFile) with
// backends each; the first backend of every service has weight w.
func serviceFile(file, perFile, backends, w int) string {
	var b strings.Builder
	for i := file * perFile; i < (file+1)*perFile; i++ {
		fmt.Fprintf(&b, "[[service]]\nname = \"svc-%d\"\naddress = \"198.18.%d.%d\"\nport = %d\nscheduler = \"wrr\"\n",
			i, 100+i/250/200, 1+i/200%250, 1000+i%200)
		fmt.Fprintf(&b, "  [service.check]\n  type = \"tcp\"\n  interval = \"2s\"\n")
		for j := range backends {
			weight := 1
			if j == 0 {
				weight = w
			}
			fmt.Fprintf(&b, "  [[service.backend]]\n  address = \"198.19.%d.%d\"\n  weight = %d\n", j, 1+i%250, weight)
		}
	}
	return b.String()
}
