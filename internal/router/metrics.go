package router

import (
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtenant/pgtenant/internal/pool"
)

// Metrics holds the router's Prometheus collectors in their own registry.
// Labels are small fixed sets (node, SQLSTATE class, kind): never a tenant id.
type Metrics struct {
	// Registry holds every collector below.
	Registry *prometheus.Registry

	// ClientConns is the number of client connections open now.
	ClientConns prometheus.Gauge
	// ClientTotal counts accepted client connections.
	ClientTotal prometheus.Counter
	// ClientRefused counts refused clients by reason (startup, auth, max_clients).
	ClientRefused *prometheus.CounterVec
	// Transactions counts backend checkouts completed, by node.
	Transactions *prometheus.CounterVec
	// Errors counts ErrorResponses by node ("router" for the router's own)
	// and SQLSTATE class.
	Errors *prometheus.CounterVec
	// TxnSeconds is how long a backend was held per checkout, by node.
	TxnSeconds *prometheus.HistogramVec
	// AcquireWait is how long a checkout took, by node.
	AcquireWait *prometheus.HistogramVec
	// Held is the number of transactions held now by a fence.
	Held prometheus.Gauge
	// HoldTimeouts counts held transactions that gave up (40001).
	HoldTimeouts prometheus.Counter
	// MapVersion is the version of the placement map in use.
	MapVersion prometheus.Gauge
	// LateCancelReleases counts backends given back to the pool only after
	// a cancel request of their client's, on its way as the client's
	// transaction ended, reached the server.
	LateCancelReleases prometheus.Counter
	// ClientsParked is the number of idle clients parked now, without a
	// goroutine (park_linux.go); ClientParks counts their parks.
	ClientsParked prometheus.Gauge
	ClientParks   prometheus.Counter
	// ShapeChecks counts the Describes the router sent to check a client
	// statement's shape on a backend (stale.go: one round trip each).
	ShapeChecks prometheus.Counter

	mu    sync.Mutex
	pools func() []pool.Stats
	nodes sync.Map // node name → *nodeMetrics
}

// nodeMetrics caches one node's children of the per-node vectors, so the
// per-transaction path does no label lookups.
type nodeMetrics struct {
	txns       prometheus.Counter
	txnSeconds prometheus.Observer
	acquire    prometheus.Observer
}

func (m *Metrics) node(name string) *nodeMetrics {
	if v, ok := m.nodes.Load(name); ok {
		return v.(*nodeMetrics)
	}
	nm := &nodeMetrics{
		txns:       m.Transactions.WithLabelValues(name),
		txnSeconds: m.TxnSeconds.WithLabelValues(name),
		acquire:    m.AcquireWait.WithLabelValues(name),
	}
	v, _ := m.nodes.LoadOrStore(name, nm)
	return v.(*nodeMetrics)
}

// NewMetrics creates the collectors and registers them in a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.ClientConns = prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgtenant_router_client_connections", Help: "Client connections open now."})
	m.ClientTotal = prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtenant_router_client_connections_total", Help: "Client connections accepted."})
	m.ClientRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtenant_router_client_refused_total", Help: "Client connections refused, by reason."}, []string{"reason"})
	m.Transactions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtenant_router_transactions_total", Help: "Transactions (backend checkouts) completed, by node."}, []string{"node"})
	m.Errors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtenant_router_errors_total", Help: "ErrorResponses sent to clients, by node (\"router\" for the router's own) and SQLSTATE class."}, []string{"node", "class"})
	m.TxnSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pgtenant_router_transaction_seconds", Help: "Time a backend connection was held for one transaction, by node.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"node"})
	m.AcquireWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pgtenant_router_pool_acquire_seconds", Help: "Time to check out a backend connection, by node.", Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10)}, []string{"node"})
	m.Held = prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgtenant_router_held_transactions", Help: "Transactions held now because their shard is fenced."})
	m.HoldTimeouts = prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtenant_router_hold_timeouts_total", Help: "Held transactions that timed out."})
	m.MapVersion = prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgtenant_router_map_version", Help: "Version of the placement map in use."})
	m.LateCancelReleases = prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtenant_router_late_cancel_releases_total", Help: "Backends given back to the pool after a late cancel request of their client's reached the server."})
	m.Registry.MustRegister(m.ClientConns, m.ClientTotal, m.ClientRefused, m.Transactions, m.Errors, m.TxnSeconds, m.AcquireWait, m.Held, m.HoldTimeouts, m.MapVersion, m.LateCancelReleases)
	m.ClientsParked = prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgtenant_router_clients_parked", Help: "Idle clients parked now, holding no goroutine."})
	m.ClientParks = prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtenant_router_client_parks_total", Help: "Parks of idle clients (each after 0.25-0.5 s without a message)."})
	m.Registry.MustRegister(m.ClientsParked, m.ClientParks)
	m.ShapeChecks = prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtenant_router_shape_checks_total", Help: "Describes sent to check that a statement a client described has the same result shape on the backend it runs on (one round trip each)."})
	m.Registry.MustRegister(m.ShapeChecks)
	m.Registry.MustRegister(poolCollector{m})
	return m
}

// Handler serves the registry for /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

func (m *Metrics) setPools(f func() []pool.Stats) {
	m.mu.Lock()
	m.pools = f
	m.mu.Unlock()
}

var (
	poolSizeDesc    = prometheus.NewDesc("pgtenant_router_pool_connections", "Backend connections by node and state (idle, in_use).", []string{"node", "state"}, nil)
	poolWaitingDesc = prometheus.NewDesc("pgtenant_router_pool_waiting", "Checkouts waiting for a backend connection, by node.", []string{"node"}, nil)
	poolWaitsDesc   = prometheus.NewDesc("pgtenant_router_pool_waits_total", "Checkouts that had to wait, by node.", []string{"node"}, nil)
	poolTimeoutDesc = prometheus.NewDesc("pgtenant_router_pool_wait_timeouts_total", "Checkouts that timed out waiting, by node.", []string{"node"}, nil)
	poolConnErrDesc = prometheus.NewDesc("pgtenant_router_pool_connect_errors_total", "Failed backend connection attempts, by node.", []string{"node"}, nil)
)

// poolCollector reports pool stats at scrape time.
type poolCollector struct{ m *Metrics }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolSizeDesc
	ch <- poolWaitingDesc
	ch <- poolWaitsDesc
	ch <- poolTimeoutDesc
	ch <- poolConnErrDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	f := c.m.pools
	c.m.mu.Unlock()
	if f == nil {
		return
	}
	for _, s := range f() {
		ch <- prometheus.MustNewConstMetric(poolSizeDesc, prometheus.GaugeValue, float64(s.Idle), s.Node, "idle")
		ch <- prometheus.MustNewConstMetric(poolSizeDesc, prometheus.GaugeValue, float64(s.InUse), s.Node, "in_use")
		ch <- prometheus.MustNewConstMetric(poolWaitingDesc, prometheus.GaugeValue, float64(s.Waiting), s.Node)
		ch <- prometheus.MustNewConstMetric(poolWaitsDesc, prometheus.CounterValue, float64(s.Waits), s.Node)
		ch <- prometheus.MustNewConstMetric(poolTimeoutDesc, prometheus.CounterValue, float64(s.WaitTimeouts), s.Node)
		ch <- prometheus.MustNewConstMetric(poolConnErrDesc, prometheus.CounterValue, float64(s.ConnectErrs), s.Node)
	}
}

// sqlstateClass is the first two characters of a SQLSTATE.
func sqlstateClass(code string) string {
	if len(code) < 2 {
		return "??"
	}
	return code[:2]
}
