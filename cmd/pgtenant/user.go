package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/wire"
)

func newUserCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Manage the users that log in to the router",
		Long: `Manage router users kept in the catalog. Every router following the catalog
picks up changes within a second. Only verifiers are stored (SCRAM-SHA-256 and
md5, as Postgres stores them), never the password.

Users in the config file's 'router: users:' section are checked first; catalog
users are consulted for any other name. The router logs in to the nodes with
the nodes' own connection strings, not as these users; each user's
transactions run as a role there: the runtime role of 'pgtenant rls enable'
(none before), the role given with --role, or, for a user restricted to a
tenant with --tenant, a role that reaches only that tenant's shard.`,
	}
	var stdin bool
	var role, tenant string
	set := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a router user, or change its password",
		Long: `Create a user that apps log in to the router with, or change its password:
the catalog keeps its SCRAM-SHA-256 and md5 verifiers (never the password),
and every router following the catalog picks it up within a second. The
router checks them with --auth scram-sha-256 (its default) or md5; with
--auth trust any name gets in. The nodes never see these users: each user's
transactions run there as a role (the runtime role of 'rls enable', --role,
or --tenant's restricted role; see 'pgtenant user --help').

Undo: 'pgtenant user remove NAME'.`,
		Example: `  pgtenant user add app                        # asks for the password
  printf '%s' "$APP_PASSWORD" | pgtenant user add app --password-stdin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			password, err := a.readPassword(cmd.InOrStdin(), stdin)
			if err != nil {
				return err
			}
			scram, err := wire.SCRAMVerifier(password, 4096)
			if err != nil {
				return err
			}
			if role != "" && tenant != "" {
				return usagef("--role and --tenant exclude each other: a restricted user runs as its shard's role")
			}
			u := catalog.User{Name: args[0], SCRAM: scram, MD5: wire.MD5Hash(args[0], password), Role: role, Tenant: tenant}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				var loc placement.Location
				if tenant != "" {
					if loc, err = c.Locate(ctx, tenant); err != nil {
						return err
					}
				}
				if err := c.SetUser(ctx, u); err != nil {
					return err
				}
				switch {
				case tenant != "":
					fmt.Fprintf(a.stdout, "user %s saved, restricted to tenant %s (shard %d, role %s)\n", u.Name, strconv.Quote(tenant), loc.Shard.ID, access.RestrictedRole(loc.Shard.ID))
					return a.applyAccess(ctx, c, []placement.Shard{loc.Shard})
				case role != "":
					fmt.Fprintf(a.stdout, "user %s saved, runs as role %s\n", u.Name, role)
				default:
					fmt.Fprintf(a.stdout, "user %s saved\n", u.Name)
				}
				return nil
			})(cmd, args)
		},
	}
	set.Flags().BoolVar(&stdin, "password-stdin", false, "read the password from standard input instead of asking")
	set.Flags().StringVar(&role, "role", "", "run the user's transactions as this role (made with 'pgtenant role create')")
	set.Flags().StringVar(&tenant, "tenant", "", "restrict the user to this tenant: its transactions run as a role that reaches only the tenant's shard, under row-level security, and escape statements are refused")
	cmd.AddCommand(set, &cobra.Command{
		Use:     "list",
		Short:   "List router users",
		Example: `  pgtenant user list`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			users, err := c.Users(ctx)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(usersJSON(users))
			}
			w := a.table("USER", "ROLE", "TENANT")
			for _, u := range usersJSON(users) {
				role, tenant := u.Role, "-"
				if u.Tenant != "" {
					tenant = strconv.Quote(u.Tenant)
					if role == "" {
						role = "(tenant not registered)"
					}
				} else if role == "" {
					role = "(runtime role)"
				}
				row(w, u.User, role, tenant)
			}
			return w.Flush()
		}),
	}, &cobra.Command{
		Use:     "remove NAME",
		Short:   "Remove a router user",
		Example: `  pgtenant user remove app`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				if err := c.RemoveUser(ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "user %s removed\n", args[0])
				return nil
			})(cmd, args)
		},
	})
	return cmd
}

// readPassword reads a password from stdin (one line, or all of it when not a
// terminal with --password-stdin), asking without echo on a terminal.
func (a *app) readPassword(in io.Reader, fromStdin bool) (string, error) {
	if f, ok := in.(*os.File); ok && !fromStdin && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(a.stderr, "password: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(a.stderr)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		return string(b), nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("read password: %w", err)
	}
	password := strings.TrimRight(line, "\r\n")
	if password == "" {
		return "", usagef("empty password: give it on standard input (--password-stdin) or at the prompt")
	}
	return password, nil
}
