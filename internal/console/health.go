package console

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/nodestats"
)

// Thresholds past which a health number is drawn as worth a look.
const (
	// warnHitRate: Heroku's pg:diagnose and Citus' dashboard want 99 % of
	// table reads from the cache; under 95 % is drawn highlighted.
	warnHitRate = 0.95
	// warnTxSeconds: a transaction open longer holds back vacuum (and a
	// shard move's replication slot).
	warnTxSeconds = 60
	// warnConnShare: connections over this share of max_connections.
	warnConnShare = 0.8
)

// NodeHealth is the HealthFunc of `pgtenant console`: the node's health from
// Postgres' own views (nodestats.Collect), as the overview's compact numbers.
func NodeHealth(ctx context.Context, node string, conn *pgx.Conn) ([]Metric, error) {
	s, err := nodestats.Collect(ctx, conn)
	if err != nil {
		return nil, err
	}
	return healthMetrics(s), nil
}

func healthMetrics(s nodestats.Stats) []Metric {
	var out []Metric
	rate := func(name string, h nodestats.HitRate) {
		if h.Rate == nil {
			out = append(out, Metric{Name: name, Value: "–"})
			return
		}
		out = append(out, Metric{Name: name, Value: fmt.Sprintf("%.1f%%", *h.Rate*100), Warn: *h.Rate < warnHitRate})
	}
	rate("cache hit", s.Cache)
	rate("index hit", s.IndexCache)

	c := s.Connections
	conns := fmt.Sprintf("%d", c.Database)
	var states []string
	for _, st := range []string{"active", "idle in transaction"} {
		if n := c.ByState[st]; n > 0 {
			states = append(states, fmt.Sprintf("%d %s", n, st))
		}
	}
	if len(states) > 0 {
		conns += " (" + strings.Join(states, ", ") + ")"
	}
	if c.MaxConnections > 0 {
		conns += fmt.Sprintf(", server %d/%d", c.Server, c.MaxConnections)
	}
	out = append(out, Metric{Name: "connections", Value: conns,
		Warn: c.MaxConnections > 0 && float64(c.Server) > warnConnShare*float64(c.MaxConnections)})

	if tx := s.LongestTransaction; tx != nil {
		out = append(out, Metric{Name: "longest transaction", Value: fmt.Sprintf("%.0f s (pid %d, %s)", tx.AgeSeconds, tx.PID, tx.State),
			Warn: tx.AgeSeconds > warnTxSeconds})
	}
	if len(s.Slots) > 0 {
		var worst int64
		inactive := 0
		for _, sl := range s.Slots {
			if sl.LagBytes != nil {
				worst = max(worst, *sl.LagBytes)
			}
			if !sl.Active {
				inactive++
			}
		}
		v := fmt.Sprintf("%d, most behind %s", len(s.Slots), humanBytes(worst))
		if inactive > 0 {
			v += fmt.Sprintf(", %d inactive", inactive)
		}
		out = append(out, Metric{Name: "replication slots", Value: v, Warn: inactive > 0})
	}
	for _, f := range s.Followers {
		if f.Kind == "physical" && f.ReplayLagBytes != nil {
			out = append(out, Metric{Name: "follower " + f.ApplicationName, Value: humanBytes(*f.ReplayLagBytes) + " behind"})
		}
	}
	out = append(out, Metric{Name: "database", Value: humanBytes(s.DatabaseBytes)})
	if s.Disk.FreeBytes != nil {
		v := humanBytes(*s.Disk.FreeBytes) + " free"
		warn := false
		if s.Disk.TotalBytes != nil && *s.Disk.TotalBytes > 0 {
			share := float64(*s.Disk.FreeBytes) / float64(*s.Disk.TotalBytes)
			v += fmt.Sprintf(" (%.0f%%)", share*100)
			warn = share < 0.1
		}
		out = append(out, Metric{Name: "disk", Value: v, Warn: warn})
	}
	dead := fmt.Sprintf("%d", s.Vacuum.DeadTuples)
	if s.Vacuum.TablesDue > 0 {
		dead += fmt.Sprintf(", %d tables due for vacuum", s.Vacuum.TablesDue)
	}
	out = append(out, Metric{Name: "dead tuples", Value: dead, Warn: s.Vacuum.TablesDue > 0})
	if len(s.Statements.Top) > 0 {
		st := s.Statements.Top[0]
		q := st.Query
		if len(q) > 60 {
			q = q[:60] + "…"
		}
		out = append(out, Metric{Name: "slowest statement", Value: fmt.Sprintf("%.1f ms mean × %d: %s", st.MeanMS, st.Calls, q)})
	}
	return out
}
