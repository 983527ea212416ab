package catalog

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/nodedsn"
)

// MinServerVersion is the oldest PostgreSQL major version a node may run.
const MinServerVersion = 14

// Node is a registered node.
type Node struct {
	Name   string
	DSN    string
	Shards int
}

// Check results.
const (
	CheckOK   = "ok"
	CheckWarn = "warn"
	CheckFail = "fail"
)

// CheckResult is one line of a node check.
type CheckResult struct {
	Name   string // what was checked
	Status string // CheckOK, CheckWarn or CheckFail
	Detail string
}

// NodeReport is the outcome of checking one node.
type NodeReport struct {
	Node    string
	Checks  []CheckResult
	Version int // server major version, 0 when unreachable
	// Identity identifies the node's database (see NodeIdentity); empty when unknown.
	Identity string
}

// Failed reports whether any check failed.
func (r NodeReport) Failed() bool {
	for _, c := range r.Checks {
		if c.Status == CheckFail {
			return true
		}
	}
	return false
}

// Err summarises the failed checks as one error, nil when none failed.
func (r NodeReport) Err() error {
	var msgs []string
	for _, c := range r.Checks {
		if c.Status == CheckFail {
			msgs = append(msgs, c.Name+": "+c.Detail)
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("node %s: %s", r.Node, strings.Join(msgs, "; "))
}

// connectNode connects to a node (dsn resolved) with a connect timeout of at most 5s.
func connectNode(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse connection string %q: %w", RedactDSN(dsn), unwrapParse(err))
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 5*time.Second {
		cfg.ConnectTimeout = 5 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	return conn, nil
}

// CheckNode connects to dsn (secret references already resolved) and checks
// what pgtenant needs of a node: it is reachable, runs PostgreSQL >= 14, lets
// the user create schemas, and (for online moves) has wal_level=logical and
// replication rights. It reads the node's identity (NodeIdentity).
func CheckNode(ctx context.Context, name, dsn string) NodeReport {
	r := NodeReport{Node: name}
	add := func(check, status, detail string) {
		r.Checks = append(r.Checks, CheckResult{Name: check, Status: status, Detail: detail})
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		add("connection string", CheckFail, fmt.Sprintf("cannot parse %q: %v", RedactDSN(dsn), unwrapParse(err)))
		return r
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 5*time.Second {
		cfg.ConnectTimeout = 5 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		add("reachable", CheckFail, fmt.Sprintf("cannot connect to %s:%d: %v", cfg.Host, cfg.Port, err))
		return r
	}
	defer conn.Close(context.Background())
	add("reachable", CheckOK, fmt.Sprintf("%s:%d database %s as %s", cfg.Host, cfg.Port, cfg.Database, cfg.User))

	var num int
	var version string
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('server_version')`).Scan(&num, &version); err != nil {
		add("version", CheckFail, err.Error())
		return r
	}
	r.Version = num / 10000
	r.Checks = append(r.Checks, versionCheck(num, version))

	var canCreate, superuser, replication bool
	if err := conn.QueryRow(ctx, `SELECT has_database_privilege(current_user, current_database(), 'CREATE'),
		rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user`).Scan(&canCreate, &superuser, &replication); err != nil {
		add("privileges", CheckFail, err.Error())
	} else if !canCreate && !superuser {
		add("privileges", CheckFail, "the user cannot CREATE schemas in this database; GRANT CREATE ON DATABASE to it")
	} else {
		add("privileges", CheckOK, "can create shard schemas")
	}

	var walLevel string
	if err := conn.QueryRow(ctx, `SHOW wal_level`).Scan(&walLevel); err != nil {
		add("wal_level", CheckWarn, err.Error())
	} else if walLevel != "logical" {
		add("wal_level", CheckWarn, fmt.Sprintf("wal_level is %q; online shard moves need wal_level=logical (set it and restart the server); `shard move --method copy` works without", walLevel))
	} else {
		add("wal_level", CheckOK, "logical")
	}
	if !superuser && !replication {
		add("replication", CheckWarn, fmt.Sprintf("the user has neither SUPERUSER nor REPLICATION; online moves need one of them: ALTER ROLE %s REPLICATION", pgx.Identifier{cfg.User}.Sanitize()))
	}
	r.Checks = append(r.Checks, moveChecks(ctx, conn, cfg, walLevel, superuser)...)
	if id, err := NodeIdentity(ctx, conn); err != nil {
		add("identity", CheckFail, err.Error())
	} else {
		r.Identity = id
		add("identity", CheckOK, id)
	}
	r.Checks = append(r.Checks, tlsCheck(ctx, conn, cfg))
	return r
}

// tlsCheck reports whether the connection to the node is encrypted (the
// router's pool connects with the same DSN, so with the same sslmode).
func tlsCheck(ctx context.Context, conn *pgx.Conn, cfg *pgx.ConnConfig) CheckResult {
	var ssl bool
	var version, cipher *string
	if err := conn.QueryRow(ctx, `SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl, &version, &cipher); err != nil {
		return CheckResult{"tls", CheckWarn, fmt.Sprintf("cannot tell whether the connection is encrypted: %v", err)}
	}
	verified := false
	if tc := cfg.TLSConfig; tc != nil {
		verified = !tc.InsecureSkipVerify || tc.VerifyPeerCertificate != nil || tc.VerifyConnection != nil
	}
	return judgeTLS(ssl, deref(version)+" "+deref(cipher), cfg.Host, verified)
}

// judgeTLS is tlsCheck's verdict: encrypted is fine (with a note when the
// server's certificate is not verified); clear text is fine only to this
// machine.
func judgeTLS(ssl bool, suite, host string, verified bool) CheckResult {
	switch {
	case ssl && verified:
		return CheckResult{"tls", CheckOK, fmt.Sprintf("encrypted (%s), server certificate verified", strings.TrimSpace(suite))}
	case ssl:
		return CheckResult{"tls", CheckOK, fmt.Sprintf("encrypted (%s); the server certificate is not verified: sslmode=verify-full in the DSN checks it", strings.TrimSpace(suite))}
	case isLocalHost(host):
		return CheckResult{"tls", CheckOK, "not encrypted (a connection on this machine)"}
	}
	return CheckResult{"tls", CheckWarn, "not encrypted: set ssl=on on the server and sslmode=verify-full (or require) in the node's DSN"}
}

func isLocalHost(host string) bool {
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// versionCheck judges server_version_num.
func versionCheck(num int, version string) CheckResult {
	if num/10000 < MinServerVersion {
		return CheckResult{"version", CheckFail, fmt.Sprintf("PostgreSQL %s is too old; pgtenant needs %d or newer", version, MinServerVersion)}
	}
	return CheckResult{"version", CheckOK, "PostgreSQL " + version}
}

func unwrapParse(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) && pe.Unwrap() != nil {
		return pe.Unwrap()
	}
	return err
}

// AddNode checks and registers a node. A node that fails its check is refused;
// warnings are returned in the report.
//
// dsn is stored as given; its $NAME references are resolved (SetSecrets) to
// connect. A database already registered under another name, or the catalog
// database itself, is refused with ErrDuplicateNode (see NodeIdentity).
func (c *Catalog) AddNode(ctx context.Context, name, dsn string) (NodeReport, error) {
	// A name already taken is refused before the checks, which connect to
	// the node and create (and drop) a replication slot there.
	// So is a catalog that was never initialised.
	var taken bool
	err := c.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pgtenant.nodes WHERE name = $1)`, name).Scan(&taken)
	if isUndefinedTable(err) {
		return NodeReport{Node: name}, fmt.Errorf("add node %s: %w", name, ErrNotInitialized)
	}
	if err == nil && taken {
		err := AlreadyRegistered(name)
		c.logOp(ctx, "node add", map[string]any{"node": name}, err)
		return NodeReport{Node: name}, fmt.Errorf("add node: %w", err)
	}
	resolved, err := c.resolve(dsn)
	if err != nil {
		c.logOp(ctx, "node add", map[string]any{"node": name}, err)
		return NodeReport{Node: name}, fmt.Errorf("add node %s: %w", name, err)
	}
	report := CheckNode(ctx, name, resolved)
	if err := report.Err(); err != nil {
		c.logOp(ctx, "node add", map[string]any{"node": name}, err)
		return report, fmt.Errorf("add node: %w", err)
	}
	if err := c.checkDuplicate(ctx, name, report.Identity); err != nil {
		if isUndefinedTable(err) {
			err = ErrNotInitialized
		} else if isUndefinedColumn(err) {
			err = ErrOutdated
		}
		err = fmt.Errorf("node %s: %w", name, err)
		c.logOp(ctx, "node add", map[string]any{"node": name}, err)
		return report, fmt.Errorf("add node: %w", err)
	}
	_, err = c.pool.Exec(ctx, `INSERT INTO pgtenant.nodes (name, dsn, identity) VALUES ($1, $2, $3)`, name, dsn, report.Identity)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "nodes_identity" {
			var other string
			_ = c.pool.QueryRow(ctx, `SELECT name FROM pgtenant.nodes WHERE identity = $1`, report.Identity).Scan(&other)
			err = fmt.Errorf("node %s: %w", name, duplicateError(other, report.Identity))
		} else if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			err = AlreadyRegistered(name)
		} else if errors.As(err, &pgErr) && pgErr.Code == "23514" {
			err = fmt.Errorf("node name %q: use 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", name)
		} else if isUndefinedTable(err) {
			err = ErrNotInitialized
		}
		c.logOp(ctx, "node add", map[string]any{"node": name}, err)
		return report, fmt.Errorf("add node: %w", err)
	}
	c.logOp(ctx, "node add", map[string]any{"node": name, "dsn": RedactDSN(dsn)}, nil)
	c.logger.Info("node added", "node", name)
	return report, nil
}

// Nodes lists the registered nodes with their shard counts, without the
// legacy node of a running import (LegacyNodes).
func (c *Catalog) Nodes(ctx context.Context) ([]Node, error) {
	rows, err := c.pool.Query(ctx, `SELECT n.name, n.dsn, count(s.id)::int FROM pgtenant.nodes n
		LEFT JOIN pgtenant.shards s ON s.node = n.name GROUP BY n.name, n.dsn ORDER BY n.name`)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, ErrNotInitialized
		}
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	nodes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) {
		var n Node
		err := r.Scan(&n.Name, &n.DSN, &n.Shards)
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	legacy, err := LegacyNodes(ctx, c.pool)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := nodes[:0]
	for _, n := range nodes {
		if !legacy[n.Name] {
			out = append(out, n)
		}
	}
	return out, nil
}

// Node returns one registered node.
func (c *Catalog) Node(ctx context.Context, name string) (Node, error) {
	var n Node
	err := c.pool.QueryRow(ctx, `SELECT n.name, n.dsn, (SELECT count(*)::int FROM pgtenant.shards s WHERE s.node = n.name)
		FROM pgtenant.nodes n WHERE n.name = $1`, name).Scan(&n.Name, &n.DSN, &n.Shards)
	if errors.Is(err, pgx.ErrNoRows) {
		return n, UnknownNode(name)
	}
	if err != nil {
		return n, fmt.Errorf("read node %q: %w", name, err)
	}
	return n, nil
}

// RemoveNode unregisters a node that holds no shard.
func (c *Catalog) RemoveNode(ctx context.Context, name string) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		var shards int
		err := tx.QueryRow(ctx, `SELECT (SELECT count(*)::int FROM pgtenant.shards WHERE node = n.name)
			FROM pgtenant.nodes n WHERE n.name = $1 FOR UPDATE`, name).Scan(&shards)
		if errors.Is(err, pgx.ErrNoRows) {
			return UnknownNode(name)
		}
		if err != nil {
			return err
		}
		if shards > 0 {
			return fmt.Errorf("node %q holds %d shards (SQLSTATE 55006); move them off first with `pgtenant node drain %s`: %w", name, shards, name, ErrNodeInUse)
		}
		_, err = tx.Exec(ctx, `DELETE FROM pgtenant.nodes WHERE name = $1`, name)
		return err
	})
	c.logOp(ctx, "node remove", map[string]any{"node": name}, err)
	if err != nil {
		return fmt.Errorf("remove node: %w", err)
	}
	return nil
}

// RedactDSN hides the password in a connection string (URL or key=value
// form); a secret reference ($NAME, ${NAME}) is shown as it is.
func RedactDSN(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if !nodedsn.LiteralPassword(dsn) {
			return dsn
		}
		u, err := url.Parse(dsn)
		if err != nil {
			return "(unparseable connection string)"
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		if q := u.Query(); q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	if r, ok := nodedsn.RedactKeywords(dsn); ok {
		return r
	}
	return "(unparseable connection string)"
}
