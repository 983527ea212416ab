package migrate

import "github.com/jackc/pgx/v5"

// searchPath is the search_path a shard's migrations run with: the shard's
// schema, then the shared schema when there is one. Objects a migration
// creates go to the first, the shard's; goose's version table is looked up
// in current_schema(), the shard's, too.
func searchPath(schema, shared string) string {
	p := pgx.Identifier{schema}.Sanitize()
	if shared != "" && shared != schema {
		p += ", " + pgx.Identifier{shared}.Sanitize()
	}
	return p
}
