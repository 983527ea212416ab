package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// ledger checks, once the load has stopped, that every client's
// acknowledged writes are on the node that now holds its shard: each key of
// kv holds the last value acknowledged for it (or the value of a later
// attempt whose outcome the client could not know), and no key holds a
// value that was never sent. It returns a line for the report.
func (l *load) ledger(ctx context.Context, e *env) (string, error) {
	shards, err := e.cat.Shards(ctx)
	if err != nil {
		return "", fmt.Errorf("ledger: %w", err)
	}
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
	}()
	var acked, lost, stray int
	for _, cl := range l.clients {
		sh := shards[cl.shard]
		conn := conns[sh.Node]
		if conn == nil {
			if conn, err = pgx.Connect(ctx, e.nodes[sh.Node]); err != nil {
				return "", fmt.Errorf("ledger: node %s: %w", sh.Node, err)
			}
			conns[sh.Node] = conn
		}
		rows, err := conn.Query(ctx, `SELECT k, val FROM `+pgx.Identifier{sh.Schema, "kv"}.Sanitize()+` WHERE client = $1`, cl.id)
		if err != nil {
			return "", fmt.Errorf("ledger: %w", err)
		}
		got := map[int]int64{}
		var k int
		var v int64
		if _, err := pgx.ForEachRow(rows, []any{&k, &v}, func() error { got[k] = v; return nil }); err != nil {
			return "", fmt.Errorf("ledger: %w", err)
		}
		acked += len(cl.acked)
		for k, want := range cl.acked {
			have, ok := got[k]
			if !ok || (have != want && !slices.Contains(cl.unsure[k], have)) {
				lost++
			}
		}
		for k, have := range got {
			if _, ok := cl.acked[k]; !ok && !slices.Contains(cl.unsure[k], have) {
				stray++
			}
		}
	}
	return fmt.Sprintf("ledger: %d keys acknowledged, %d lost, %d never acknowledged", acked, lost, stray), nil
}
