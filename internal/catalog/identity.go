package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrDuplicateNode means a node's database is already registered (under
// another name) or is the catalog database itself.
var ErrDuplicateNode = errors.New("the database is already registered")

// A node is identified by its database, not by its connection string (two
// DSNs can reach one database through different host names, ports or
// users): the server's system identifier (pg_control_system(), unique per
// cluster from initdb) and the database's oid, as "system S database O".
// Where pg_control_system() is not executable by the node's user (some
// hosted Postgres revoke it; PG15 grants it to PUBLIC by default), the
// identity is a random id that pgtenant stores once in the node database
// (table pgtenant_node.identity, which needs only the CREATE privilege that
// nodes require anyway), as "marker UUID". Clones of a database (a promoted
// physical replica, a restored backup) share its identity, with one
// exception: a follower promoted by `node split --via-follower` gets a row
// in pgtenant_node.promoted right after its promotion (MarkPromoted), and
// its identity ends in " promoted UUID". So the promoted follower of a
// registered node can be registered, and a plain second registration of
// either database is still refused.

// NodeIdentity returns the identity of the database conn is connected to.
// Where pg_control_system() is revoked it creates the marker row the first
// time (use ReadNodeIdentity on a standby, which is read-only).
func NodeIdentity(ctx context.Context, conn *pgx.Conn) (string, error) {
	return nodeIdentity(ctx, conn, true)
}

// ReadNodeIdentity is NodeIdentity without writing anything: where
// pg_control_system() is revoked and no marker row exists it fails.
func ReadNodeIdentity(ctx context.Context, conn *pgx.Conn) (string, error) {
	return nodeIdentity(ctx, conn, false)
}

func nodeIdentity(ctx context.Context, conn *pgx.Conn, create bool) (string, error) {
	base, err := baseIdentity(ctx, conn, create)
	if err != nil {
		return "", err
	}
	var promoted *string
	if err := conn.QueryRow(ctx, `SELECT to_regclass('pgtenant_node.promoted')::text`).Scan(&promoted); err != nil {
		return "", fmt.Errorf("read node identity: %w", err)
	}
	if promoted == nil {
		return base, nil
	}
	var id string
	switch err := conn.QueryRow(ctx, `SELECT id::text FROM pgtenant_node.promoted`).Scan(&id); {
	case errors.Is(err, pgx.ErrNoRows):
		return base, nil
	case err != nil:
		return "", fmt.Errorf("read node identity (pgtenant_node.promoted): %w", err)
	}
	return base + " promoted " + id, nil
}

// MarkPromoted records, in the database conn is connected to (a follower
// just promoted), the id that tells it apart from the database it was a
// copy of (see NodeIdentity). It is idempotent for one id; another id
// replaces it (a follower of a promoted follower, promoted in turn).
func MarkPromoted(ctx context.Context, conn *pgx.Conn, id string) error {
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS pgtenant_node;
			CREATE TABLE IF NOT EXISTS pgtenant_node.promoted (one boolean PRIMARY KEY DEFAULT true CHECK (one),
				id uuid NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now())`)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO pgtenant_node.promoted (id) VALUES ($1)
			ON CONFLICT (one) DO UPDATE SET id = excluded.id, promoted_at = now() WHERE pgtenant_node.promoted.id <> excluded.id`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("record the promoted follower's identity: %w", err)
	}
	return nil
}

func baseIdentity(ctx context.Context, conn *pgx.Conn, create bool) (string, error) {
	var sysid string
	var oid uint32
	err := conn.QueryRow(ctx, `SELECT (SELECT system_identifier::text FROM pg_control_system()), d.oid
		FROM pg_database d WHERE d.datname = current_database()`).Scan(&sysid, &oid)
	if err == nil {
		return fmt.Sprintf("system %s database %d", sysid, oid), nil
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		return "", fmt.Errorf("read node identity: %w", err)
	}
	var id string
	if !create {
		if err := conn.QueryRow(ctx, `SELECT id::text FROM pgtenant_node.identity`).Scan(&id); err != nil {
			return "", fmt.Errorf("read node identity (pg_control_system() is not allowed, so from pgtenant_node.identity): %w", err)
		}
		return "marker " + id, nil
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS pgtenant_node;
			CREATE TABLE IF NOT EXISTS pgtenant_node.identity (one boolean PRIMARY KEY DEFAULT true CHECK (one),
				id uuid NOT NULL DEFAULT gen_random_uuid());
			INSERT INTO pgtenant_node.identity DEFAULT VALUES ON CONFLICT DO NOTHING`); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT id::text FROM pgtenant_node.identity`).Scan(&id)
	})
	if err != nil {
		return "", fmt.Errorf("read node identity (pg_control_system() is not allowed, so from pgtenant_node.identity): %w", err)
	}
	return "marker " + id, nil
}

// identityOf connects to dsn and returns its identity.
func identityOf(ctx context.Context, dsn string) (string, error) {
	conn, err := connectNode(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	return NodeIdentity(ctx, conn)
}

// catalogIdentity is the identity of the catalog database.
func (c *Catalog) catalogIdentity(ctx context.Context) (string, error) {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Release()
	return NodeIdentity(ctx, conn.Conn())
}

// checkDuplicate refuses identity when it is the catalog database's or an
// already registered node's (other than name). Nodes registered before
// identities were recorded get theirs first (best effort: an unreachable node
// is skipped, and recorded at its next `node check`).
func (c *Catalog) checkDuplicate(ctx context.Context, name, identity string) error {
	if cat, err := c.catalogIdentity(ctx); err != nil {
		return fmt.Errorf("read the catalog's identity: %w", err)
	} else if cat == identity {
		return fmt.Errorf("this is the catalog database (%s): a node must be another database: %w", identity, ErrDuplicateNode)
	}
	rows, err := c.pool.Query(ctx, `SELECT name, dsn FROM pgtenant.nodes WHERE identity IS NULL AND name <> $1 ORDER BY name`, name)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	missing, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) {
		var n Node
		err := r.Scan(&n.Name, &n.DSN)
		return n, err
	})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range missing {
		dsn, err := c.resolve(n.DSN)
		if err == nil {
			var id string
			if id, err = identityOf(ctx, dsn); err == nil {
				err = c.recordIdentity(ctx, n.Name, id)
			}
		}
		if err != nil {
			c.logger.Warn("record node identity", "node", n.Name, "err", err)
		}
	}
	var other string
	err = c.pool.QueryRow(ctx, `SELECT name FROM pgtenant.nodes WHERE identity = $1 AND name <> $2`, identity, name).Scan(&other)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up node identity: %w", err)
	}
	return duplicateError(other, identity)
}

func duplicateError(other, identity string) error {
	return fmt.Errorf("it is the same database as node %q (%s); register each database once (a follower of that node is registered by `pgtenant node split %s --via-follower DSN`, which promotes it): %w",
		other, identity, other, ErrDuplicateNode)
}

// recordIdentity stores a node's identity; a clash with another node's is ErrDuplicateNode.
func (c *Catalog) recordIdentity(ctx context.Context, name, identity string) error {
	_, err := c.pool.Exec(ctx, `UPDATE pgtenant.nodes SET identity = $2 WHERE name = $1 AND identity IS DISTINCT FROM $2`, name, identity)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		var other string
		_ = c.pool.QueryRow(ctx, `SELECT name FROM pgtenant.nodes WHERE identity = $1`, identity).Scan(&other)
		return duplicateError(other, identity)
	}
	if err != nil {
		return fmt.Errorf("record node identity: %w", err)
	}
	return nil
}

// CheckRegisteredNode checks a registered node like CheckNode and records its
// identity (nodes registered before identities existed get one here); a node
// whose database is also registered under another name, or is the catalog,
// fails the "identity" check.
func (c *Catalog) CheckRegisteredNode(ctx context.Context, n Node) NodeReport {
	dsn, err := c.resolve(n.DSN)
	if err != nil {
		return NodeReport{Node: n.Name, Checks: []CheckResult{{Name: "connection string", Status: CheckFail, Detail: err.Error()}}}
	}
	r := CheckNode(ctx, n.Name, dsn)
	if r.Identity == "" {
		return r
	}
	for i, ch := range r.Checks {
		if ch.Name != "identity" {
			continue
		}
		if err := c.checkDuplicate(ctx, n.Name, r.Identity); err != nil {
			r.Checks[i] = CheckResult{Name: "identity", Status: CheckFail, Detail: err.Error()}
		} else if err := c.recordIdentity(ctx, n.Name, r.Identity); err != nil {
			r.Checks[i] = CheckResult{Name: "identity", Status: CheckFail, Detail: err.Error()}
		}
	}
	return r
}
