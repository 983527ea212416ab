package router

import (
	"fmt"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// DDLMode says what the router does with a schema-changing statement (the
// lexer's stmtInfo.ddl: CREATE, ALTER or DROP of a table, index, view,
// sequence, function, type, ...; COMMENT ON; GRANT or REVOKE ON) sent for a
// tenant, which changes that tenant's shard only.
type DDLMode string

// DDL modes.
const (
	// DDLWarn runs the statement and sends the client a WARNING (SQLSTATE
	// 01000) naming the shard, before the statement's own answer.
	DDLWarn DDLMode = "warn"
	// DDLRefuse refuses the statement with 0A000 and runs nothing (inside a
	// transaction, the transaction is aborted as a server error would).
	DDLRefuse DDLMode = "refuse"
	// DDLAllow runs it silently.
	DDLAllow DDLMode = "allow"
)

// ddlHint is what every answer about a schema change through the router
// says to do instead.
const ddlHint = "Apply schema changes to every shard with `pgtenant migrate up` (write one with `pgtenant migrate create NAME`); `pgtenant migrate status` shows what each shard has."

// ddlWarning is the notice for a schema change that ran on shard only.
func ddlWarning(shard string) []byte {
	return wire.AppendError(nil, &wire.Error{Severity: "WARNING", Code: "01000",
		Message: fmt.Sprintf("this schema change applies to %s only", shard),
		Detail:  "Statements sent through the router run on the tenant's shard; the other shards do not get this change, and pgtenant migrate does not know of it.",
		Hint:    ddlHint})
}

// ddlRefusedError refuses a schema change for one shard (Config.DDL refuse).
func ddlRefusedError(shard string) *wire.Error {
	return &wire.Error{Code: "0A000",
		Message: fmt.Sprintf("schema changes through the router are refused: this one would change %s only", shard),
		Detail:  "The router's ddl setting is refuse.", Hint: ddlHint}
}

// ddlCheck decides a statement about to run for tenant: for a schema
// change (info.ddl) it returns the refusal (DDLRefuse), or the notice to
// queue before the statement's answer (DDLWarn, the default). Other
// statements cost one test of info.ddl. (The change is counted when the
// statement is sent, see ddlSent: not for one refused.)
func (ss *session) ddlCheck(info *stmtInfo, tenant string) ([]byte, *wire.Error) {
	if !info.ddl || tenant == "" || tenant == anyTenant || tenant == descTenant || ss.srv.cfg.DDL == DDLAllow {
		return nil, nil
	}
	shard := "tenant " + tenant + "'s shard"
	if m := ss.srv.mp.Load(); m != nil {
		if loc, e := ss.locate(m, tenant); e == nil {
			shard = loc.Shard.Schema
		}
	}
	if ss.srv.cfg.DDL == DDLRefuse {
		return nil, ddlRefusedError(shard)
	}
	return ddlWarning(shard), nil
}

// ddlSent counts a schema change about to be sent to a server (info.ddl):
// later Parses are analysed afresh (stale.go). Server-wide, so only for a
// statement past the refusals and routing: a refused one would make every
// session prepare its statements again, as often as a client sends it.
func (ss *session) ddlSent(info *stmtInfo) {
	if info.ddl {
		ss.srv.schemaChanged()
	}
}

// bodyDDL reports whether the statement starting at toks[i], in a DO body
// or a string one EXECUTEs (see guard), changes the shard's schema:
// CREATE, ALTER or DROP of something neither temporary nor outside the
// shard's schema; COMMENT ON; GRANT or REVOKE ... ON (as the lexer decides
// for a statement sent alone). A DO block is seen; a function or procedure
// the statement calls is not.
func bodyDDL(toks []gtok, i int) bool {
	w := toks[i].text
	if toks[i].kind != tWord {
		return false
	}
	switch {
	case eqFold(w, "comment"):
		// (ON after it: not an assignment to a variable named comment.)
		return i+1 < len(toks) && toks[i+1].kind == tWord && eqFold(toks[i+1].text, "on")
	case eqFold(w, "grant"), eqFold(w, "revoke"):
		for j := i + 1; j < len(toks) && !(toks[j].kind == tPunct && toks[j].text == ";"); j++ {
			if toks[j].kind == tWord && eqFold(toks[j].text, "on") {
				return true // privileges on objects, not a role's membership
			}
		}
		return false
	case !(eqFold(w, "create") || eqFold(w, "alter") || eqFold(w, "drop")):
		return false
	}
	for j := i + 1; j < len(toks) && j <= i+8; j++ {
		t := toks[j]
		switch {
		case t.kind == tPunct && t.text == ";":
			return true
		case t.kind != tWord && t.kind != tQuotedIdent:
		case hasPrefixFold(identText(t), "pg_temp"):
			return false
		case t.kind != tWord:
		case eqFold(t.text, "or"), eqFold(t.text, "replace"), eqFold(t.text, "global"), eqFold(t.text, "local"):
		case j == i+1 || eqFold(toks[j-1].text, "replace") || eqFold(toks[j-1].text, "global") || eqFold(toks[j-1].text, "local"):
			if eqFold(t.text, "temp") || eqFold(t.text, "temporary") || ddlOutside(t.text) {
				return false
			}
		}
	}
	return true
}
