package main

import (
	"log"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof/ on the default mux
	"os"
)

// pprofEnv names the address (host:port) where a mounted daemon serves
// net/http/pprof, for profiling (make bench, docs/performance.md).
const pprofEnv = "QEMUFS_PPROF"

// servePprof serves the profiler when QEMUFS_PPROF is set.
func servePprof(logger *log.Logger) {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return
	}
	go func() {
		logger.Printf("pprof on http://%s/debug/pprof/", addr)
		if err := http.ListenAndServe(addr, nil); err != nil {
			logger.Printf("pprof: %v", err)
		}
	}()
}
