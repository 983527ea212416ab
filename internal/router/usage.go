package router

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtenant/pgtenant/internal/usage"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// usageAcc counts a session's work on its attached backend; it is added to
// the server's sketch when the backend is released (one lock per
// transaction, none per message).
type usageAcc struct {
	statements, errors, bytes int64
}

// note counts a message relayed to the client.
func (u *usageAcc) note(typ byte, n int) {
	switch typ {
	case wire.MsgDataRow:
		u.bytes += int64(n)
	case wire.MsgCommandComplete:
		u.statements++
	}
}

func (s *Server) startUsage() {
	if s.cfg.UsageCapacity < 0 {
		return
	}
	s.usage = usage.New(s.cfg.UsageCapacity)
	err := s.m.Registry.Register(usageCollector{s})
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		s.log.Warn("register usage metrics", "err", err)
	}
}

// observeUsage adds the session's work on the backend it releases.
func (s *Server) observeUsage(ss *session, held time.Duration) {
	u := ss.use
	ss.use = usageAcc{}
	if s.usage == nil || ss.beTenant == anyTenant || ss.beTenant == descTenant || ss.beTenant == "" {
		return
	}
	// Short transactions without errors are sampled (Config.UsageSampleBelow):
	// the sketch's lock and lookup by tenant name are ~0.8 µs, paid now by
	// about one in below/held of them.
	k := usage.SampleWeight(held, s.cfg.UsageSampleBelow, u.errors > 0)
	if k == 0 {
		return
	}
	s.usage.Observe(ss.beTenant, usage.Counts{Transactions: 1, Statements: u.statements, Errors: u.errors,
		BackendSeconds: held.Seconds(), Bytes: u.bytes}.Scale(k))
}

// Usage returns the busiest n tenants (all kept when n <= 0) by by, and
// false when usage counting is off.
func (s *Server) Usage(by usage.By, n int) (usage.Snapshot, bool) {
	if s.usage == nil {
		return usage.Snapshot{}, false
	}
	return s.usage.Top(by, n), true
}

// serveUsage is /admin/tenants?by=time&limit=N.
func (s *Server) serveUsage(w http.ResponseWriter, r *http.Request) {
	by := usage.ByTime
	if v := r.URL.Query().Get("by"); v != "" {
		b, err := usage.ParseBy(v)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		by = b
	}
	n := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			http.Error(w, "limit: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	snap, ok := s.Usage(by, n)
	if !ok {
		http.Error(w, "usage counting is off (router usage_capacity < 0)", http.StatusNotFound)
		return
	}
	writeJSON(w, snap)
}

var (
	tenantTxnsDesc    = prometheus.NewDesc("pgtenant_tenant_transactions_total", "Transactions (backend checkouts) of the busiest tenants by backend time.", []string{"tenant"}, nil)
	tenantStmtsDesc   = prometheus.NewDesc("pgtenant_tenant_statements_total", "Statements completed for the busiest tenants by backend time.", []string{"tenant"}, nil)
	tenantErrsDesc    = prometheus.NewDesc("pgtenant_tenant_errors_total", "Server errors of the busiest tenants by backend time.", []string{"tenant"}, nil)
	tenantSecondsDesc = prometheus.NewDesc("pgtenant_tenant_backend_seconds_total", "Time backends were held for the busiest tenants.", []string{"tenant"}, nil)
	tenantBytesDesc   = prometheus.NewDesc("pgtenant_tenant_bytes_total", "Bytes of rows returned to the busiest tenants.", []string{"tenant"}, nil)
	usageEvictedDesc  = prometheus.NewDesc("pgtenant_usage_evicted_total", "Tenants dropped from the usage sketch to make room.", nil, nil)
)

// usageCollector exports the top Config.UsageTopK tenants at scrape time:
// the only metrics with a tenant label, bounded to K series each. A tenant
// that leaves the top and comes back restarts from its sketch's counts,
// which rate() reads as a counter reset.
type usageCollector struct{ s *Server }

func (c usageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tenantTxnsDesc, tenantStmtsDesc, tenantErrsDesc, tenantSecondsDesc, tenantBytesDesc, usageEvictedDesc} {
		ch <- d
	}
}

func (c usageCollector) Collect(ch chan<- prometheus.Metric) {
	snap, ok := c.s.Usage(usage.ByTime, c.s.cfg.UsageTopK)
	if !ok {
		return
	}
	for _, e := range snap.Tenants {
		ch <- prometheus.MustNewConstMetric(tenantTxnsDesc, prometheus.CounterValue, float64(e.Transactions), e.Tenant)
		ch <- prometheus.MustNewConstMetric(tenantStmtsDesc, prometheus.CounterValue, float64(e.Statements), e.Tenant)
		ch <- prometheus.MustNewConstMetric(tenantErrsDesc, prometheus.CounterValue, float64(e.Errors), e.Tenant)
		ch <- prometheus.MustNewConstMetric(tenantSecondsDesc, prometheus.CounterValue, e.BackendSeconds, e.Tenant)
		ch <- prometheus.MustNewConstMetric(tenantBytesDesc, prometheus.CounterValue, float64(e.Bytes), e.Tenant)
	}
	ch <- prometheus.MustNewConstMetric(usageEvictedDesc, prometheus.CounterValue, float64(snap.Evicted))
}
