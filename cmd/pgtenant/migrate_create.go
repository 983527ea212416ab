package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/migrate"
)

func newMigrateCreateCmd(a *app) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Write a new, empty migration file with a timestamp version",
		Long: `Write DIR/YYYYMMDDHHMMSS_name.sql (the version is the current UTC time, as
Rails does, so files made on different branches rarely collide) with empty
'-- +goose Up' and '-- +goose Down' sections, and print its path. Nothing is
applied: fill it in, then run 'pgtenant migrate up' (which refuses a file whose
Up section still has no SQL, SQLSTATE 42601: applied, its version would be
recorded and the SQL written later would never run).

The Up section shows, commented out, the annotation that says where a new
table keeps its tenant id ('-- pgtenant: tenant_column=COL' on the line before
its CREATE TABLE; also parent=, shared): 'migrate up' records it in the tables
registry ('pgtenant table list'), which row-level security, tenant moves,
exports and purges read.

NAME is letters, digits and underscores, starting with a letter; CamelCase and
dashes become snake_case (AddUsersEmail: add_users_email).`,
		Example: `  pgtenant migrate create add_invoices --dir ./migrations
  pgtenant migrate create AddUsersEmail`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := migrate.Create(dir, args[0], time.Now())
			if errors.Is(err, migrate.ErrInvalidName) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "migrations", "directory of migration files (created if missing)")
	return cmd
}
