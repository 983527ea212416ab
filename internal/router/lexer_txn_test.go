package router

import "testing"

// Which statements end a transaction, roll back to a savepoint or call a
// procedure, and whether more follow (endsTxn, rollbackTo, callsProc,
// txnThenMore), including BEGIN ATOMIC bodies (an empty one too).
func TestLexEndsTxn(t *testing.T) {
	for _, tc := range []struct {
		q                     string
		ends, more, rbTo, prc bool
	}{
		{q: `"commit"`},
		{q: `SELECT 1 /* COMMIT */`},
		{q: "-- commit\nSELECT 1"},
		{q: `SELECT 'commit'`},
		{q: `SELECT $$;commit$$`},
		{q: `SELECT $x$;commit$x$`},
		{q: `SELECT e'a\';commit'`},
		{q: `ABORT AND CHAIN`, ends: true},
		{q: `abort`, ends: true},
		{q: `End`, ends: true},
		{q: `end transaction`, ends: true},
		{q: `COMMIT AND NO CHAIN`, ends: true},
		{q: `ROLLBACK TRANSACTION AND CHAIN`, ends: true},
		{q: `ROLLBACK TRANSACTION TO SAVEPOINT a`, rbTo: true},
		{q: `ROLLBACK WORK TO a`, rbTo: true},
		{q: `ROLLBACK/**/TO a`, rbTo: true},
		{q: `COMMIT PREPARED 'x'`},
		{q: `ROLLBACK PREPARED 'x'`},
		{q: `PREPARE TRANSACTION 'x'`, ends: true},
		{q: `PREPARE tx AS SELECT 1`},
		{q: `CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END`},
		{q: `CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END`},
		{q: `CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; END`, ends: true},
		{q: `SELECT 1; COMMIT`, ends: true},
		{q: `COMMIT; SELECT 1`, ends: true, more: true},
		{q: `COMMIT; -- x`, ends: true},
		{q: `/* tenant: t4 */ COMMIT`, ends: true},
		{q: `CALL p()`, prc: true},
		{q: `do $$begin commit; end$$`, prc: true},
		// an empty BEGIN ATOMIC body:
		{q: `CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC END; END`, ends: true},
		{q: `CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC END; END AND CHAIN`, ends: true},
	} {
		i := classify(tc.q)
		if i.endsTxn != tc.ends || i.txnThenMore != tc.more || i.rollbackTo != tc.rbTo || i.callsProc != tc.prc {
			t.Errorf("%q: endsTxn=%v txnThenMore=%v rollbackTo=%v callsProc=%v, want %v %v %v %v",
				tc.q, i.endsTxn, i.txnThenMore, i.rollbackTo, i.callsProc, tc.ends, tc.more, tc.rbTo, tc.prc)
		}
	}
}
