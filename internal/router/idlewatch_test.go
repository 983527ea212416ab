package router

import (
	"context"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The idle watch wakes a session-mode client's read when its backend speaks
// (session.armIdle): after each wake the session waits again with the
// client's own deadline. Notifications keep coming to an idle client, its
// next query is served, and its idle timeout still ends it (57P05). Under
// TLS too (pgx prefers it when the router offers it): a read a deadline
// ended goes on.
func TestSessionIdleWatchWakes(t *testing.T) {
	t.Cleanup(checkNoLeak(t)) // runs after the routers stop
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			cfg := Config{PoolMode: PoolSession, ClientIdleTimeout: 3 * time.Second}
			if tlsOn {
				cfg.TLS = selfSigned(t)
			}
			idleWakes(t, startRouter(t, cfg, nil))
		})
	}
}

func idleWakes(t *testing.T, s *Server) {
	ctx := ctx(t)
	mode := "disable"
	if s.cfg.TLS != nil {
		mode = "require"
	}
	c, err := pgx.Connect(ctx, withSSLMode(routerURL(s, "t4"), mode))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	if _, err := c.Exec(ctx, "LISTEN idlewake"); err != nil {
		t.Fatal(err)
	}
	if _, got := c.PgConn().Conn().(*tls.Conn); got != (s.cfg.TLS != nil) {
		t.Fatalf("client over TLS: %v, want %v", got, !got)
	}
	other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
	for round := 0; round < 2; round++ {
		for i := 0; i < 3; i++ {
			payload := fmt.Sprintf("r%d n%d", round, i)
			notified := make(chan error, 1)
			go func() {
				time.Sleep(50 * time.Millisecond) // while c waits
				_, err := other.Exec(ctx, "SELECT pg_notify('idlewake', '"+payload+"')")
				notified <- err
			}()
			n, err := c.WaitForNotification(ctx)
			if err := <-notified; err != nil {
				t.Fatal(err)
			}
			if err != nil || n.Payload != payload {
				t.Fatalf("notification %q: %+v %v", payload, n, err)
			}
		}
		var got int
		if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&got); err != nil || got != shardOf("t4") {
			t.Fatalf("query after idle notifications: %d %v", got, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err = c.WaitForNotification(wctx)
	if got := pgCode(err); got != "57P05" {
		t.Errorf("idle client after notifications: %v (%s), want 57P05 (idle timeout)", err, got)
	}
	other.Close(ctx)
}
