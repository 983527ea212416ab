package router

// Savepoints in a transaction's SETs: a session SET made after SAVEPOINT s
// and undone by ROLLBACK TO s is not the session's, one made before it is
// (the server's ROLLBACK TO tag is ROLLBACK, as a whole transaction's is).
// txnSets keeps the savepoints as marks among the SETs (setting.sp):
// ROLLBACK TO drops the SETs after its mark, RELEASE drops the marks from
// its own on, and an error inside a block with a savepoint leaves the SETs
// to the ROLLBACK TO or ROLLBACK that follows.

// What a setting in txnSets stands for (setting.sp).
const (
	spNone       uint8 = iota // a SET or RESET
	spMark                    // SAVEPOINT name
	spRollbackTo              // ROLLBACK TO [SAVEPOINT] name (never kept)
	spRelease                 // RELEASE [SAVEPOINT] name (never kept)
)

// savepointOf returns sql as a savepoint statement of txnSets, or nil when
// it is none (or not one statement the router can read).
func savepointOf(sql string) *setting {
	toks := sqlTokens(sql)
	for len(toks) > 0 && toks[len(toks)-1].kind == tkSemi {
		toks = toks[:len(toks)-1]
	}
	word := func(i int, w string) bool { return i < len(toks) && toks[i].kind == tkWord && toks[i].text == w }
	var sp uint8
	i := 1
	switch {
	case word(0, "savepoint"):
		sp = spMark
	case word(0, "release"):
		sp = spRelease
		if word(1, "savepoint") && len(toks) == 3 {
			i = 2
		}
	case word(0, "rollback") || word(0, "abort"):
		sp = spRollbackTo
		if word(i, "work") || word(i, "transaction") {
			i++
		}
		if !word(i, "to") {
			return nil
		}
		i++
		if word(i, "savepoint") && len(toks) == i+2 {
			i++
		}
	default:
		return nil
	}
	if len(toks) != i+1 || (toks[i].kind != tkWord && toks[i].kind != tkQuotedIdent) {
		return nil
	}
	return &setting{name: toks[i].text, sp: sp}
}

// savepointDone applies a savepoint statement the server completed to
// txnSets.
func (ss *session) savepointDone(st *setting) {
	if st.sp == spMark {
		ss.txnSets = append(ss.txnSets, *st)
		return
	}
	at := -1
	for i := len(ss.txnSets) - 1; i >= 0; i-- {
		if s := &ss.txnSets[i]; s.sp == spMark && s.name == st.name {
			at = i
			break
		}
	}
	if at < 0 {
		if st.sp == spRollbackTo {
			// A savepoint the router did not see (a form savepointOf
			// cannot read): what its SETs were is unknown, keep none.
			ss.txnSets = ss.txnSets[:0]
		}
		return
	}
	if st.sp == spRollbackTo {
		ss.txnSets = ss.txnSets[:at+1] // the savepoint stays
		return
	}
	kept := ss.txnSets[:at]
	for _, s := range ss.txnSets[at+1:] {
		if s.sp == spNone {
			kept = append(kept, s)
		}
	}
	ss.txnSets = kept
}

// savepointHeld reports whether txnSets holds a savepoint: an error then
// leaves the transaction's SETs to the ROLLBACK TO or ROLLBACK after it.
func (ss *session) savepointHeld() bool {
	for i := range ss.txnSets {
		if ss.txnSets[i].sp == spMark {
			return true
		}
	}
	return false
}
