package importer

import "fmt"

// UnregisteredTenantError: a change on the legacy database, made after
// import init, belongs to a tenant the catalog does not know (a customer
// created on the legacy database directly, not through the router). Both
// followers, the logical stream and the trigger method's queue, reject
// such a change into pgtenant.import_rejects (reject.go,
// trigger_reject.go) and go on; the error reaches the operator only for a
// change no reject explains (the delete of a row of such a tenant that
// the follower never saw written), and then the follower stops before it.
type UnregisteredTenantError struct {
	Table, Tenant string
}

func (e *UnregisteredTenantError) Error() string {
	return withSQLState("23503", fmt.Sprintf("a change of table %s belongs to tenant %q, which is not registered; the change stream stopped before it and applied nothing after it"+
		"\n  hint: register the tenant (pgtenant tenant add ID) and run import start again: it resumes at this change", e.Table, e.Tenant))
}

// SQLState is 23503 (foreign_key_violation: a row whose tenant is not
// registered), as import init reports such rows.
func (e *UnregisteredTenantError) SQLState() string { return "23503" }
