package metrics

import (
	"net/http"
	"net/http/pprof"
)

// PprofHandler serves net/http/pprof under /debug/pprof/ on its own mux. It belongs on a
// separate, opt-in listener, never on the public one.
func PprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
