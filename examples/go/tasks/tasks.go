// Package tasks is the Go example app: a small HTTP API over projects and
// tasks, one tenant per request, that talks to pgtenant's router through
// pgxpool exactly as it would talk to one Postgres database.
//
// The tenant comes from the X-Tenant header. Every request runs in one
// transaction that starts with
//
//	SELECT set_config('pgtenant.tenant', $1, true)
//
// (the same as SET LOCAL pgtenant.tenant = ...), so the tenant ends with the
// transaction and a pooled connection never carries it into the next
// request. Queries still filter by tenant_id: a shard holds several tenants.
package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Project is one row of projects, with its task count.
type Project struct {
	ID    int64  `json:"id"`
	Name  string `json:"name"`
	Tasks int    `json:"tasks"`
}

// Store runs each tenant's work through the router.
type Store struct {
	Pool *pgxpool.Pool
}

// InTenant runs fn in a transaction on tenant's shard.
func (s *Store) InTenant(ctx context.Context, tenant string, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('pgtenant.tenant', $1, true)", tenant); err != nil {
			return fmt.Errorf("select tenant %q: %w", tenant, err)
		}
		return fn(tx)
	})
}

// CreateProject adds a project with the given task titles and returns its
// id. A nil name is refused by the table's NOT NULL constraint (23502), and
// nothing of the request is kept.
func (s *Store) CreateProject(ctx context.Context, tenant string, name *string, tasks []string) (int64, error) {
	var id int64
	err := s.InTenant(ctx, tenant, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "INSERT INTO projects (name) VALUES ($1) RETURNING id", name).Scan(&id); err != nil {
			return err
		}
		for _, t := range tasks {
			if _, err := tx.Exec(ctx, "INSERT INTO tasks (project_id, title) VALUES ($1, $2)", id, t); err != nil {
				return err
			}
		}
		return nil
	})
	return id, err
}

// Projects lists tenant's projects with their task counts.
func (s *Store) Projects(ctx context.Context, tenant string) ([]Project, error) {
	var out []Project
	err := s.InTenant(ctx, tenant, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT p.id, p.name, count(t.id)
			FROM projects p LEFT JOIN tasks t ON t.project_id = p.id AND t.tenant_id = p.tenant_id
			WHERE p.tenant_id = $1
			GROUP BY p.id, p.name ORDER BY p.id`, tenant)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Project, error) {
			var p Project
			err := r.Scan(&p.ID, &p.Name, &p.Tasks)
			return p, err
		})
		return err
	})
	return out, err
}

// Handler serves GET /projects and POST /projects ({"name": ..., "tasks":
// [...]}) for the tenant in the X-Tenant header.
func (s *Store) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /projects", func(w http.ResponseWriter, r *http.Request) {
		ps, err := s.Projects(r.Context(), r.Header.Get("X-Tenant"))
		if err != nil {
			httpError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ps)
	})
	mux.HandleFunc("POST /projects", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Name  *string  `json:"name"` // nil when absent or null: the database says no
			Tasks []string `json:"tasks"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id, err := s.CreateProject(r.Context(), r.Header.Get("X-Tenant"), in.Name, in.Tasks)
		if err != nil {
			httpError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"id": strconv.FormatInt(id, 10)})
	})
	return mux
}

// httpError maps the router's errors to HTTP: an unknown tenant (42704) or
// none at all (3D000) is the client's mistake.
func httpError(w http.ResponseWriter, err error) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "42704", "3D000":
			writeJSON(w, http.StatusNotFound, map[string]string{"error": pgErr.Message, "sqlstate": pgErr.Code})
			return
		}
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": pgErr.Message, "sqlstate": pgErr.Code})
		return
	}
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
