// Package demo is the sample app behind `pgtenant demo`: an energy-monitoring
// SaaS schema (customers, buildings, meters, hourly readings, tariffs), a
// generator of realistic, uneven per-tenant data, and ad-hoc per-tenant
// queries (joins, a CTE, a window function).
package demo

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations is the sample app's schema, in migrate's file format.
func Migrations() fs.FS {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		panic(err) // the embedded directory exists at compile time
	}
	return sub
}

var (
	prefixes = []string{"north", "south", "blue", "green", "bright", "silver", "red", "alpine", "river", "stone", "oak", "sun", "iron", "coastal", "urban", "prime", "clear", "solid", "nova", "metro"}
	suffixes = []string{"energy", "utilities", "properties", "estates", "logistics", "retail", "hotels", "schools", "clinics", "foods", "works", "housing", "offices", "labs", "campus"}
)

// TenantIDs returns n realistic, distinct tenant ids, always the same for the
// same n. The first is deliberately awkward (a quote, an ampersand, unicode).
func TenantIDs(n int) []string {
	ids := []string{"O'Brien & Söhne GmbH"}
	for i := 0; len(ids) < n; i++ {
		p := prefixes[i%len(prefixes)]
		s := suffixes[(i/len(prefixes))%len(suffixes)]
		if k := i / (len(prefixes) * len(suffixes)); k > 0 {
			ids = append(ids, fmt.Sprintf("%s-%s-%d", p, s, k+1))
		} else {
			ids = append(ids, p+"-"+s)
		}
	}
	return ids[:n]
}

// seedSQL fills one shard (the search_path's) for the tenants in $1 that
// have no customer row yet, so seeding twice adds nothing. Sizes are skewed:
// most tenants have one or two buildings, a few have a dozen.
var seedSQL = []string{
	`CREATE TEMP TABLE new_tenants ON COMMIT DROP AS
		SELECT t FROM unnest($1::text[]) t WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.tenant_id = t)`,
	`INSERT INTO customers (tenant_id, name, plan, created_at)
		SELECT t, initcap(replace(t, '-', ' ')), (ARRAY['starter', 'pro', 'enterprise'])[1 + abs(hashtext(t)) % 3],
			now() - (abs(hashtext(t)) % 1500) * interval '1 day'
		FROM new_tenants`,
	`INSERT INTO buildings (tenant_id, name, city, floor_area_m2)
		SELECT t, 'Building ' || b, (ARRAY['Prague', 'Brno', 'Vienna', 'Berlin', 'Lyon', 'Porto'])[1 + abs(hashtext(t || b)) % 6],
			400 + abs(hashtext(b || t)) % 25000
		FROM new_tenants, generate_series(1, 1 + ((abs(hashtext(t)) % 1000)::bigint ^ 3 / 90000000)::int) b`,
	`INSERT INTO meters (tenant_id, building_id, energy, unit)
		SELECT b.tenant_id, b.id, e.energy, e.unit
		FROM buildings b JOIN new_tenants n ON n.t = b.tenant_id,
			(VALUES ('electricity', 'kWh', 0), ('gas', 'm3', 1), ('heat', 'GJ', 2), ('water', 'm3', 3)) e(energy, unit, k)
		WHERE e.k <= abs(hashtext(b.name || b.tenant_id)) % 4`,
	`INSERT INTO readings (meter_id, tenant_id, hour, value)
		SELECT m.id, m.tenant_id, h,
			round((CASE m.energy WHEN 'electricity' THEN 40 WHEN 'gas' THEN 12 WHEN 'heat' THEN 0.8 ELSE 3 END
				* (1 + 0.6 * sin(extract(hour FROM h) * pi() / 12)) * (0.7 + random() * 0.6))::numeric, 3)
		FROM meters m JOIN new_tenants n ON n.t = m.tenant_id,
			generate_series(date_trunc('hour', now()) - interval '7 days', date_trunc('hour', now()) - interval '1 hour', interval '1 hour') h`,
	`INSERT INTO tariffs (tenant_id, energy, price, valid_from)
		SELECT t, e, round((0.05 + random() * 0.3)::numeric, 4), current_date - 30
		FROM new_tenants, unnest(ARRAY['electricity', 'gas', 'heat', 'water']) e`,
}

// Seed loads sample data for tenants into schema over conn, in one
// transaction. Tenants that already have data are left alone.
func Seed(ctx context.Context, conn *pgx.Conn, schema string, tenants []string) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+pgx.Identifier{schema}.Sanitize()); err != nil {
			return err
		}
		for i, q := range seedSQL {
			var args []any
			if i == 0 {
				args = []any{tenants}
			}
			if _, err := tx.Exec(ctx, q, args...); err != nil {
				return fmt.Errorf("seed %s: step %d: %w", schema, i, err)
			}
		}
		return nil
	})
}

// Query is one ad-hoc per-tenant query; $1 is the tenant id.
type Query struct {
	Title string
	SQL   string
}

// Queries are the ad-hoc queries the demo runs for a tenant.
var Queries = []Query{
	{"energy cost per building this week (joins)", `
SELECT b.name AS building, b.city, m.energy, round(sum(r.value), 1) AS consumed, m.unit,
       round(sum(r.value * t.price), 2) AS cost_eur
FROM readings r
JOIN meters m ON m.id = r.meter_id
JOIN buildings b ON b.id = m.building_id
JOIN tariffs t ON t.tenant_id = r.tenant_id AND t.energy = m.energy
WHERE r.tenant_id = $1
GROUP BY b.name, b.city, m.energy, m.unit
ORDER BY cost_eur DESC
LIMIT 5`},
	{"busiest day per energy (CTE)", `
WITH daily AS (
    SELECT m.energy, date_trunc('day', r.hour)::date AS day, sum(r.value) AS total
    FROM readings r JOIN meters m ON m.id = r.meter_id
    WHERE r.tenant_id = $1
    GROUP BY 1, 2
), ranked AS (
    SELECT energy, day, total, max(total) OVER (PARTITION BY energy) AS best FROM daily
)
SELECT energy, day, round(total, 1) AS total FROM ranked WHERE total = best ORDER BY energy`},
	{"peak hours of the electricity meters (window function)", `
SELECT meter_id, hour, value, round(avg_24h, 2) AS avg_24h
FROM (
    SELECT r.meter_id, r.hour, r.value,
           avg(r.value) OVER (PARTITION BY r.meter_id ORDER BY r.hour ROWS 23 PRECEDING) AS avg_24h,
           rank() OVER (PARTITION BY r.meter_id ORDER BY r.value DESC) AS rk
    FROM readings r JOIN meters m ON m.id = r.meter_id
    WHERE r.tenant_id = $1 AND m.energy = 'electricity'
) x
WHERE rk = 1
ORDER BY value DESC
LIMIT 5`},
}

// ByShard groups tenant ids by shard, with the shards in ascending order.
func ByShard(tenants map[string]int) (shards []int, groups map[int][]string) {
	groups = map[int][]string{}
	for t, s := range tenants {
		groups[s] = append(groups[s], t)
	}
	for s, ts := range groups {
		sort.Strings(ts)
		shards = append(shards, s)
	}
	sort.Ints(shards)
	return shards, groups
}
