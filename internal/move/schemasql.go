package move

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// A schema dump is turned into SQL once (pg_restore -v -f -, one process)
// and cut into its TOC entries by the header pg_restore writes before each
// one in verbose mode:
//
//	--
//	-- TOC entry 219 (class 1259 OID 16397)
//	-- Dependencies: 7
//	-- Name: items; Type: TABLE; Schema: s1; Owner: postgres
//	--
//
// Each move then runs the entries of its own schema on the target through
// pgx, the pre-copy part and the post-copy part each as one implicit
// transaction (one simple-protocol query), as pg_restore --single-transaction
// would. The SQL is pg_restore's own; only the choice and order of entries
// are the mover's (pg_restore's order, which respects dependencies). So one
// dump of many schemas serves every move of a batch from the same node
// without a process per move.

// scriptEntry is one TOC entry of a dump as SQL.
type scriptEntry struct {
	id                int
	name, typ, schema string
	settings          []string // session SETs in effect for it (tablespace, table access method), as pg_restore emitted them
	sql               string
}

// schemaScript is a schema-only dump as SQL, cut into its TOC entries.
type schemaScript struct {
	// preamble is the dump's opening session settings (search_path '', check_function_bodies off, …).
	preamble string
	// local is the preamble with every setting made transaction-local (SET
	// LOCAL), so the script can run on a connection that outlives it; empty
	// when the preamble holds anything else.
	local   string
	entries []scriptEntry
}

var (
	tocEntryRe  = regexp.MustCompile(`^-- TOC entry (\d+) \(class \d+ OID \d+\)$`)
	tocHeaderRe = regexp.MustCompile(`^-- Name: (.*); Type: ([A-Z][A-Z ]*); Schema: (.*); Owner: (.*)$`)
	tocSetRe    = regexp.MustCompile(`^SET [a-z_]+ = .*;$`)
)

// loadScript turns the custom-format dump into SQL with pg_restore and cuts it into entries.
func (m *Mover) loadScript(ctx context.Context, dump string) (*schemaScript, error) {
	bin, err := m.binDir()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "pg_restore"), "--verbose", "--file=-", dump)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("pg_restore --file: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	s, err := parseScript(out)
	if err != nil {
		return nil, fmt.Errorf("read pg_restore's script: %w", err)
	}
	return s, nil
}

// parseScript cuts pg_restore's verbose plain-text output into TOC entries.
func parseScript(out []byte) (*schemaScript, error) {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 1<<20), 1<<30)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	// pg_dump 17.6/16.10/15.14 and later fence the script with psql's
	// \restrict KEY … \unrestrict KEY (meta-commands, not SQL): drop both.
	var restrict string
	for _, l := range lines {
		if k, ok := strings.CutPrefix(l, `\restrict `); ok {
			restrict = k
			break
		}
	}
	isRestrict := func(l string) bool {
		return restrict != "" && (l == `\restrict `+restrict || l == `\unrestrict `+restrict)
	}
	// An entry starts at "--" followed by "-- TOC entry N (...)".
	start := func(i int) bool { return lines[i] == "--" && i+1 < len(lines) && tocEntryRe.MatchString(lines[i+1]) }
	s := &schemaScript{}
	settings := map[string]string{}
	var order []string // setting names in the order first seen
	var body []string
	i := 0
	for ; i < len(lines) && !start(i); i++ {
		if !isRestrict(lines[i]) && !strings.HasPrefix(lines[i], "--") {
			body = append(body, lines[i])
		}
	}
	s.preamble = strings.TrimSpace(strings.Join(body, "\n")) + "\n"
	s.local = localSettings(body)
	for i < len(lines) {
		// Header: "--", "-- TOC entry", "-- …" lines, "--".
		id, _ := strconv.Atoi(tocEntryRe.FindStringSubmatch(lines[i+1])[1])
		e := scriptEntry{id: id}
		i += 2
		for ; i < len(lines) && lines[i] != "--"; i++ {
			if h := tocHeaderRe.FindStringSubmatch(lines[i]); h != nil {
				e.name, e.typ, e.schema = h[1], h[2], h[3]
			}
		}
		i++ // the closing "--"
		if e.typ == "" {
			return nil, fmt.Errorf("TOC entry %d has no Name/Type/Schema header", id)
		}
		for _, k := range order {
			e.settings = append(e.settings, settings[k])
		}
		body = body[:0]
		for ; i < len(lines) && !start(i); i++ {
			if !isRestrict(lines[i]) {
				body = append(body, lines[i])
			}
		}
		// pg_restore sets the tablespace and access method of the next
		// entry just before its header: those trailing SETs are state for
		// the entries that follow, not part of this one.
		for len(body) > 0 {
			l := strings.TrimSpace(body[len(body)-1])
			if l == "" || strings.HasPrefix(l, "--") {
				body = body[:len(body)-1]
				continue
			}
			if !tocSetRe.MatchString(l) {
				break
			}
			name := strings.Fields(l)[1]
			if _, ok := settings[name]; !ok {
				order = append(order, name)
			}
			settings[name] = l
			body = body[:len(body)-1]
		}
		e.sql = strings.TrimSpace(strings.Join(body, "\n"))
		s.entries = append(s.entries, e)
	}
	return s, nil
}

// belongsTo reports whether the entry is part of schema: an object in it,
// or the schema itself and its comment, security label and grants.
func (e *scriptEntry) belongsTo(schema string) bool {
	if e.schema == schema {
		return true
	}
	if e.schema != "-" {
		return false
	}
	return (e.typ == "SCHEMA" && e.name == schema) || e.name == "SCHEMA "+schema
}

// skipped reports entries never restored on the target: publications and
// subscriptions belong to a node, and a trigger-method move's capture
// triggers (row and TRUNCATE) to its move.
func (e *scriptEntry) skipped() bool {
	for _, t := range skippedTypes {
		if e.typ == t || strings.HasPrefix(e.typ, t+" ") {
			return true
		}
	}
	return e.typ == "TRIGGER" && (strings.HasSuffix(e.name, " "+captureTrigger) || strings.HasSuffix(e.name, " "+truncateTrigger))
}

// postData reports whether the entry is built after the copy.
func (e *scriptEntry) postData() bool {
	for _, t := range postDataTypes {
		if e.typ == t {
			return true
		}
	}
	return false
}

// newSettings are settings pg_restore writes in its preamble, by the
// server_version_num that introduced them.
var newSettings = map[string]int{"transaction_timeout": 170000}

// searchPathReset is how pg_dump's preamble empties search_path.
const searchPathReset = "SELECT pg_catalog.set_config('search_path', '', false);"

// localSettings returns the preamble's lines with each setting made
// transaction-local, or "" if a line is neither a SET nor the search_path reset.
func localSettings(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		switch l = strings.TrimSpace(l); {
		case l == "" || strings.HasPrefix(l, "--"):
		case l == searchPathReset:
			b.WriteString("SELECT pg_catalog.set_config('search_path', '', true);\n")
		case tocSetRe.MatchString(l):
			b.WriteString("SET LOCAL " + strings.TrimPrefix(l, "SET ") + "\n")
		default:
			return ""
		}
	}
	return b.String()
}

// sqlFor returns the SQL of schema's pre-copy (post false) or post-copy
// entries, in the dump's order, after the dump's session settings (made
// transaction-local with local, see schemaScript.local).
//
// serverNum is the target's server_version_num (0: unknown): the settings a
// newer pg_restore writes that the target's server does not know are left
// out, as pg_restore itself does when it restores into a database.
func (s *schemaScript) sqlFor(schema string, post, local bool, serverNum int) (sql string, n int) {
	var b strings.Builder
	pre := s.preamble
	if local {
		pre = s.local
	}
	for _, l := range strings.SplitAfter(pre, "\n") {
		if rest, ok := strings.CutPrefix(l, "SET "); ok {
			rest = strings.TrimPrefix(rest, "LOCAL ")
			name, _, _ := strings.Cut(rest, " ")
			if since := newSettings[name]; serverNum > 0 && serverNum < since {
				continue
			}
		}
		b.WriteString(l)
	}
	var last []string
	for i := range s.entries {
		e := &s.entries[i]
		if !e.belongsTo(schema) || e.skipped() || e.postData() != post {
			continue
		}
		if !slices.Equal(e.settings, last) {
			for _, l := range e.settings {
				if local {
					l = "SET LOCAL " + strings.TrimPrefix(l, "SET ")
				}
				b.WriteString(l + "\n")
			}
			last = e.settings
		}
		b.WriteString(e.sql)
		b.WriteString("\n")
		n++
	}
	return b.String(), n
}

// hasSchema reports whether the script holds schema's own entry.
func (s *schemaScript) hasSchema(schema string) bool {
	for i := range s.entries {
		if e := &s.entries[i]; e.typ == "SCHEMA" && e.belongsTo(schema) {
			return true
		}
	}
	return false
}
