package catalog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// moveChecks tries what an online shard move does on a node, as the node's
// role, and leaves nothing behind: a publication naming a table (created in
// a throwaway schema, rolled back), a replication connection and a
// temporary logical slot on it (dropped). Each failure says what to grant.
// Moves with --method copy need none of it, so failures are warnings.
func moveChecks(ctx context.Context, conn *pgx.Conn, cfg *pgx.ConnConfig, walLevel string, superuser bool) []CheckResult {
	user := pgx.Identifier{cfg.User}.Sanitize()
	name := fmt.Sprintf("pgtenant_check_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6)
	var out []CheckResult
	warn := func(check, detail string) { out = append(out, CheckResult{check, CheckWarn, detail}) }

	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		sch := pgx.Identifier{name}.Sanitize()
		_, err := tx.Exec(ctx, `SET LOCAL client_min_messages = error; CREATE SCHEMA `+sch+`; CREATE TABLE `+sch+`.t (id int PRIMARY KEY);
			CREATE PUBLICATION `+sch+` FOR TABLE `+sch+`.t`)
		if err != nil {
			return err
		}
		return errRollback
	})
	if err != nil && !errors.Is(err, errRollback) {
		warn("move publication", fmt.Sprintf("cannot create a publication for a table it owns (%v); online moves need it: GRANT CREATE ON DATABASE %s TO %s",
			err, pgx.Identifier{cfg.Database}.Sanitize(), user))
	} else {
		out = append(out, CheckResult{"move publication", CheckOK, "can publish the tables it owns"})
	}

	if walLevel != "logical" {
		warn("move slot", "not tried: wal_level is not logical")
		return out
	}
	rcfg := cfg.Config.Copy()
	rcfg.RuntimeParams["replication"] = "database"
	rconn, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		var pgErr *pgconn.PgError
		fix := "ALTER ROLE " + user + " REPLICATION (as a superuser; on RDS/Aurora: GRANT rds_replication TO " + user + ")"
		if errors.As(err, &pgErr) && pgErr.Code == "28000" && !superuser {
			fix = "allow it in pg_hba.conf: host replication " + cfg.User + " <address of pgtenant> scram-sha-256, then SELECT pg_reload_conf()"
		}
		warn("move slot", fmt.Sprintf("cannot open a replication connection (%v); online moves stream changes over one: %s", err, fix))
		return out
	}
	defer rconn.Close(context.WithoutCancel(ctx))
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = rconn.Exec(sctx, `CREATE_REPLICATION_SLOT `+name+` TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')`).ReadAll()
	if err == nil {
		_, err = rconn.Exec(sctx, `DROP_REPLICATION_SLOT `+name).ReadAll()
	}
	switch {
	case err == nil:
		out = append(out, CheckResult{"move slot", CheckOK, "can create and drop a logical replication slot over a replication connection"})
	case errors.Is(sctx.Err(), context.DeadlineExceeded):
		warn("move slot", "creating a logical slot waited more than 10s for transactions open on the server; a move's slot waits for them too")
	default:
		warn("move slot", fmt.Sprintf("cannot create a logical slot (%v); raise max_replication_slots or free a slot", err))
	}
	return out
}

var errRollback = errors.New("rollback")
