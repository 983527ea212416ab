package router

// shapeAtRun reports whether the statement text is a FETCH, whose result
// shape is its cursor's when it runs, not something a Describe at Parse
// time knows: prepared before the cursor exists it is described NoData,
// and a server runs it later with the cursor's columns (it never analyses
// a FETCH again for a schema change, only for another search_path, which
// the router keeps per shard schema). Prepared afresh on another backend
// inside the cursor's block, its Describe gives those columns; that is no
// schema change, so the shape check (stale.go) lets it run, as the server
// would.
func shapeAtRun(query string) bool {
	i, n := 0, len(query)
	for i < n {
		switch c := query[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < n && query[i+1] == '-':
			for i < n && query[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < n && query[i+1] == '*':
			i = skipBlockComment(query, i)
		default:
			w := query[i:]
			return hasPrefixFold(w, "fetch") && (len(w) == 5 || !isIdent(w[5]))
		}
	}
	return false
}
