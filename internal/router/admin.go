package router

import (
	"encoding/json"
	"net/http"
	"sort"
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
		writeJSON(w, s.poolStats())
	})
	mux.HandleFunc("/admin/clients", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Clients())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
