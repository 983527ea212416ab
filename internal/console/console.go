package console

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/usage"
)

//go:embed assets
var assets embed.FS

// Config configures a Console. Zero durations mean the defaults given.
type Config struct {
	// Catalog is the open catalog the pages read. Required.
	Catalog *catalog.Catalog
	// Logger receives one line per failed page. Nil discards.
	Logger *slog.Logger
	// SizeTTL is how long shard sizes, tenant counts, node reachability and
	// node health are kept before they are read again. Zero means 10s.
	SizeTTL time.Duration
	// Refresh is how often the overview's live part reloads in the
	// browser. Zero means 1s.
	Refresh time.Duration
	// RouterWithin is how recent a router's heartbeat must be for it to be
	// listed as live (and asked for its tenants). Zero means 10s.
	RouterWithin time.Duration
	// HTTPClient asks the routers' admin API. Nil means http.DefaultClient
	// (each router's answer is bounded by routeradmin.Timeout).
	HTTPClient *http.Client
	// Health, when set, collects health numbers of a node over the
	// connection the console opened to read its sizes (see HealthFunc;
	// NodeHealth reads them with internal/nodestats). Nil draws none.
	Health HealthFunc
	// MigrationsDir is the directory of shard migrations the migrations
	// page compares the shards with. Empty means the one `migrate up`
	// recorded in the catalog; without one the page shows the versions
	// applied, not what is pending.
	MigrationsDir string
}

// Console serves the web console. Create it with New.
type Console struct {
	cfg   Config
	log   *slog.Logger
	mux   *http.ServeMux
	pages map[string]*template.Template
	nodes sampler
	migr  migrationsCache
}

// New returns a Console over cfg.Catalog. It parses the embedded templates
// and does no I/O.
func New(cfg Config) (*Console, error) {
	if cfg.Catalog == nil {
		return nil, errors.New("console: a catalog is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SizeTTL <= 0 {
		cfg.SizeTTL = 10 * time.Second
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = time.Second
	}
	if cfg.RouterWithin <= 0 {
		cfg.RouterWithin = 10 * time.Second
	}
	c := &Console{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), pages: map[string]*template.Template{}}
	c.nodes.ttl = cfg.SizeTTL
	c.migr.ttl = cfg.SizeTTL
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "assets/layout.html")
	if err != nil {
		return nil, fmt.Errorf("console: parse layout: %w", err)
	}
	for _, p := range []string{"overview", "tenants", "migrations", "ops", "routers"} {
		t, err := template.Must(base.Clone()).ParseFS(assets, "assets/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("console: parse page %s: %w", p, err)
		}
		c.pages[p] = t
	}
	static, err := fs.Sub(assets, "assets/static")
	if err != nil {
		return nil, err
	}
	c.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /{$}", c.overview)
	c.mux.HandleFunc("GET /live", c.live)
	c.mux.HandleFunc("GET /tenants", c.tenants)
	c.mux.HandleFunc("GET /migrations", c.migrations)
	c.mux.HandleFunc("GET /ops", c.ops)
	c.mux.HandleFunc("GET /routers", c.routers)
	c.mux.HandleFunc("GET /api/state", c.apiState)
	return c, nil
}

// ServeHTTP answers GET and HEAD requests; anything else is 405 (the
// console is read-only).
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Everything the pages use comes from this server: no CDN, no inline
	// script, no inline style.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "the console is read-only", http.StatusMethodNotAllowed)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// page is what every page template gets.
type page struct {
	Title   string
	Nav     string // the page's name, for the menu
	Refresh int    // milliseconds between live reloads; 0: not a live page
	Data    any
	Err     string
}

// render executes a page's layout into a buffer first, so a failure is an
// error page rather than half a page.
func (c *Console) render(w http.ResponseWriter, name, tmpl string, p page) {
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, tmpl, p); err != nil {
		c.log.Error("console page", "page", name, "err", err)
		http.Error(w, "render "+name+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}

func (c *Console) refreshMS() int { return int(c.cfg.Refresh / time.Millisecond) }

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	o, err := c.Overview(r.Context())
	p := page{Title: "Overview", Nav: "overview", Refresh: c.refreshMS(), Data: o}
	if err != nil {
		p.Err = err.Error()
	}
	c.render(w, "overview", "layout.html", p)
}

func (c *Console) live(w http.ResponseWriter, r *http.Request) {
	o, err := c.Overview(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	c.render(w, "overview", "live", page{Data: o})
}

func (c *Console) tenants(w http.ResponseWriter, r *http.Request) {
	by := usage.ByTime
	if s := r.URL.Query().Get("by"); s != "" {
		var err error
		if by, err = usage.ParseBy(s); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	limit := 50
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			http.Error(w, "limit: a positive number", http.StatusBadRequest)
			return
		}
		limit = n
	}
	t, err := c.TopTenants(r.Context(), by, limit)
	p := page{Title: "Tenants", Nav: "tenants", Data: t}
	if err != nil {
		p.Err = err.Error()
	}
	c.render(w, "tenants", "layout.html", p)
}

func (c *Console) migrations(w http.ResponseWriter, r *http.Request) {
	m, err := c.Migrations(r.Context())
	p := page{Title: "Migrations", Nav: "migrations", Data: m}
	if err != nil {
		p.Err = err.Error()
	}
	c.render(w, "migrations", "layout.html", p)
}

func (c *Console) ops(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			http.Error(w, "limit: a number from 1 to 10000", http.StatusBadRequest)
			return
		}
		limit = n
	}
	ops, err := c.cfg.Catalog.Operations(r.Context(), limit)
	p := page{Title: "Operations", Nav: "ops", Data: opViews(ops)}
	if err != nil {
		p.Err = err.Error()
	}
	c.render(w, "ops", "layout.html", p)
}

func (c *Console) routers(w http.ResponseWriter, r *http.Request) {
	o, err := c.Overview(r.Context())
	p := page{Title: "Routers", Nav: "routers", Data: o}
	if err != nil {
		p.Err = err.Error()
	}
	c.render(w, "routers", "layout.html", p)
}

// apiState serves the overview as JSON, for scripts.
func (c *Console) apiState(w http.ResponseWriter, r *http.Request) {
	o, err := c.Overview(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(o)
}
