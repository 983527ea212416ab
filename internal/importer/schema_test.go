package importer

import (
	"strings"
	"testing"
)

// TestUnqualify: the baseline from pg_dump runs in any shard schema: the
// legacy schema's name goes from the objects it qualifies and from a
// serial column's default (found by a new user's walk through the README:
// `bigserial` columns made `migrate up` fail with 42P01 on every shard).
func TestUnqualify(t *testing.T) {
	for _, tc := range []struct {
		schema, dump, want string
	}{
		{"public", `SET search_path = '';
CREATE TABLE public.invoices (
    id bigint NOT NULL
);
ALTER TABLE ONLY public.invoices ALTER COLUMN id SET DEFAULT nextval('public.invoices_id_seq'::regclass);
ALTER TABLE ONLY public.invoice_lines
    ADD CONSTRAINT invoice_lines_invoice_id_fkey FOREIGN KEY (invoice_id) REFERENCES public.invoices(id);`, `CREATE TABLE invoices (
    id bigint NOT NULL
);
ALTER TABLE ONLY invoices ALTER COLUMN id SET DEFAULT nextval('invoices_id_seq'::regclass);
ALTER TABLE ONLY invoice_lines
    ADD CONSTRAINT invoice_lines_invoice_id_fkey FOREIGN KEY (invoice_id) REFERENCES invoices(id);`},
		{"O'Hara App", `ALTER TABLE ONLY "O'Hara App".t ALTER COLUMN id SET DEFAULT nextval('"O''Hara App".t_id_seq'::regclass);`,
			`ALTER TABLE ONLY t ALTER COLUMN id SET DEFAULT nextval('t_id_seq'::regclass);`},
		// Another schema's sequence keeps its name.
		{"app", `ALTER TABLE ONLY app.t ALTER COLUMN id SET DEFAULT nextval('public.shared_seq'::regclass);`,
			`ALTER TABLE ONLY t ALTER COLUMN id SET DEFAULT nextval('public.shared_seq'::regclass);`},
	} {
		if got := strings.TrimSpace(unqualify(tc.dump, tc.schema)); got != tc.want {
			t.Errorf("unqualify(%q):\n%s\nwant\n%s", tc.schema, got, tc.want)
		}
	}
}
