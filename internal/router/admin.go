package router

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"sort"
	"strings"
	"time"
)

// ClientInfo is one client in the admin view.
type ClientInfo struct {
	Session     uint64    `json:"session"`
	User        string    `json:"user"`
	Remote      string    `json:"remote"`
	Tenant      string    `json:"tenant"`
	Backend     string    `json:"backend_node,omitempty"`
	ConnectedAt time.Time `json:"connected_at"`
}

// Clients lists connected clients.
func (s *Server) Clients() []ClientInfo {
	s.sessMu.Lock()
	out := make([]ClientInfo, 0, len(s.sessions))
	for _, ss := range s.sessions {
		ci := ClientInfo{Session: ss.id, User: ss.user, Remote: ss.remote, ConnectedAt: ss.started}
		if t := ss.view.Load(); t != nil {
			ci.Tenant = *t
		}
		if be := ss.beCur.Load(); be != nil {
			ci.Backend = be.Node()
		}
		out = append(out, ci)
	}
	s.sessMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Session < out[j].Session })
	return out
}

// AdminHandler serves a JSON view of the router: /admin/pools (per-node pool
// sizes and counters) and /admin/clients (connected clients). Mount it on the
// metrics HTTP address, not on a public one: it shows tenant ids.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/admin/pools", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.PoolStats())
	})
	mux.HandleFunc("/admin/clients", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Clients())
	})
	mux.HandleFunc("/admin/tenants", s.serveUsage)
	return mux
}

// adminEndpoints lists what HTTPHandler serves, for the /admin/ index.
var adminEndpoints = []struct{ Path, Description string }{
	{"/metrics", "Prometheus metrics (names in the README)"},
	{"/healthz", "200 while the process is up"},
	{"/readyz", "200 when a placement map is loaded and the router is not draining; says whether the catalog is reachable or the last map is served"},
	{"/admin/pools", "backend pools per node: sizes, waits, timeouts, connect errors"},
	{"/admin/clients", "connected clients: session, user, address, tenant, backend node"},
	{"/admin/tenants", "per-tenant usage (?by=time|statements|errors|bytes|transactions&limit=N): the busiest tenants this router counted"},
}

// HTTPHandler serves everything the router offers over HTTP: /metrics,
// /healthz, /readyz, /admin/ (an index) and the admin endpoints of
// AdminHandler. catalog, when not nil, tells /readyz whether the catalog is
// reachable now. Mount it on a private address: it shows tenant ids.
func (s *Server) HTTPHandler(catalog func(context.Context) error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.m.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		rd := s.Readiness(r.Context(), catalog)
		if !rd.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		writeJSON(w, rd)
	})
	mux.Handle("/admin/", s.AdminHandler())
	mux.HandleFunc("/admin/{$}", func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept"), "text/html") {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprint(w, "<!doctype html><title>pgtenant router</title><h1>pgtenant router</h1><ul>\n")
			for _, e := range adminEndpoints {
				fmt.Fprintf(w, "<li><a href=\"%s\">%s</a>: %s</li>\n", e.Path, e.Path, html.EscapeString(e.Description))
			}
			fmt.Fprint(w, "</ul>\n")
			return
		}
		type endpoint struct {
			Path        string `json:"path"`
			Description string `json:"description"`
		}
		out := make([]endpoint, len(adminEndpoints))
		for i, e := range adminEndpoints {
			out[i] = endpoint(e)
		}
		writeJSON(w, map[string]any{"endpoints": out})
	})
	return mux
}

// Readiness is what /readyz reports.
type Readiness struct {
	// Ready is true when a map is loaded and the router is not draining.
	Ready bool `json:"ready"`
	// MapVersion is the version of the map in use; zero before the first.
	MapVersion int64 `json:"map_version"`
	// Catalog is "reachable", "unreachable" or "unchecked".
	Catalog string `json:"catalog"`
	// Serving is "current map" (the catalog is reachable), "last map" (it
	// is not: the router serves the last map it loaded) or "no map".
	Serving string `json:"serving"`
	// Draining is true once SIGTERM (Drain) began.
	Draining bool `json:"draining"`
	// Error says why the catalog is unreachable.
	Error string `json:"error,omitempty"`
}

// Readiness checks the map, the drain state and, when catalog is set, the
// catalog (with a 2 second limit).
func (s *Server) Readiness(ctx context.Context, catalog func(context.Context) error) Readiness {
	rd := Readiness{Catalog: "unchecked", Serving: "no map", Draining: s.draining.Load()}
	m := s.mp.Load()
	if m != nil {
		rd.MapVersion = m.Version
		rd.Serving = "current map"
	}
	if catalog != nil {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := catalog(ctx)
		cancel()
		rd.Catalog = "reachable"
		if err != nil {
			rd.Catalog, rd.Error = "unreachable", err.Error()
			if m != nil {
				rd.Serving = "last map"
			}
		}
	}
	rd.Ready = m != nil && !rd.Draining
	return rd
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
