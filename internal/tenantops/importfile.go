package tenantops

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
)

// exportFile reads an export file section by section, each converted to
// COPY's text format (one line a row, fields in the header's column order).
type exportFile struct {
	r      *bufio.Reader
	header fileHeader
	tables map[string]fileTable
	// pending is a line read past the end of the previous section.
	pending *string
	line    int
}

// section is one table's rows in the file.
type section struct {
	table fileTable
	// write converts the section's rows to COPY text lines, passing each
	// row's fields through fix (which may rewrite the tenant column).
	write func(w io.Writer, fix func([]string)) error
}

func badFile(format string, args ...any) error {
	return &Error{Code: "22P04", Message: "not a pgtenant export file: " + fmt.Sprintf(format, args...),
		Hint: "import files written by pgtenant tenant export (sql, csv or jsonl)"}
}

// openExport reads the header line.
func openExport(r io.Reader) (*exportFile, error) {
	f := &exportFile{r: bufio.NewReaderSize(r, 64<<10), tables: map[string]fileTable{}}
	first, err := f.readLine()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, badFile("the file is empty")
		}
		return nil, err
	}
	var js string
	switch {
	case strings.HasPrefix(first, sqlHeaderPrefix):
		js = strings.TrimPrefix(first, sqlHeaderPrefix)
	case strings.HasPrefix(first, csvHeaderPrefix):
		js = strings.TrimPrefix(first, csvHeaderPrefix)
	case strings.HasPrefix(first, "{"):
		js = first
	default:
		return nil, badFile("its first line is not a pgtenant export header")
	}
	if err := json.Unmarshal([]byte(js), &f.header); err != nil || f.header.Version != 1 || f.header.Tenant == "" {
		return nil, badFile("its header line is not understood (version 1 expected)")
	}
	if _, err := ParseFormat(string(f.header.Format)); err != nil {
		return nil, badFile("format %q", f.header.Format)
	}
	for _, t := range f.header.Tables {
		f.tables[t.Name] = t
	}
	return f, nil
}

// readLine returns the next line without its newline (io.EOF at the end).
func (f *exportFile) readLine() (string, error) {
	if f.pending != nil {
		s := *f.pending
		f.pending = nil
		return s, nil
	}
	s, err := f.r.ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && s != "") {
		return "", err
	}
	f.line++
	return strings.TrimSuffix(s, "\n"), nil
}

// next returns the next section, or io.EOF.
func (f *exportFile) next() (*section, error) {
	switch f.header.Format {
	case FormatSQL:
		return f.nextSQL()
	case FormatCSV:
		return f.nextCSV()
	default:
		return f.nextJSONL()
	}
}

func (f *exportFile) table(name string) (fileTable, error) {
	t, ok := f.tables[name]
	if !ok {
		return t, badFile("line %d: table %q is not in the header", f.line, name)
	}
	return t, nil
}

func (f *exportFile) nextSQL() (*section, error) {
	for {
		line, err := f.readLine()
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(line, "COPY ") {
			continue // comments and SETs
		}
		var t fileTable
		found := false
		for _, ht := range f.header.Tables {
			if line == fmt.Sprintf("COPY %s (%s) FROM stdin;", pgx.Identifier{ht.Name}.Sanitize(), colList(ht.Columns)) {
				t, found = ht, true
				break
			}
		}
		if !found {
			return nil, badFile("line %d: %q names no table of the header with its columns", f.line, line)
		}
		return &section{table: t, write: func(w io.Writer, fix func([]string)) error {
			for {
				line, err := f.readLine()
				if err != nil {
					if errors.Is(err, io.EOF) {
						return badFile("the COPY block of %s has no end (\\.)", t.Name)
					}
					return err
				}
				if line == `\.` {
					return nil
				}
				if fix != nil {
					fields := strings.Split(line, "\t")
					fix(fields)
					line = strings.Join(fields, "\t")
				}
				if _, err := io.WriteString(w, line+"\n"); err != nil {
					return err
				}
			}
		}}, nil
	}
}

func (f *exportFile) nextCSV() (*section, error) {
	line, err := f.readLine()
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, csvTablePrefix) {
		return nil, badFile("line %d: expected %q", f.line, csvTablePrefix+"NAME")
	}
	t, err := f.table(strings.TrimPrefix(line, csvTablePrefix))
	if err != nil {
		return nil, err
	}
	return &section{table: t, write: func(w io.Writer, fix func([]string)) error {
		first := true
		for {
			if b, _ := f.r.Peek(len(csvTablePrefix)); string(b) == csvTablePrefix {
				return nil
			}
			fields, err := readCSVRecord(f.r)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return badFile("table %s: %v", t.Name, err)
			}
			f.line++
			if first { // the header row
				first = false
				continue
			}
			if len(fields) != len(t.Columns) {
				return badFile("table %s: a row has %d fields, the header %d columns", t.Name, len(fields), len(t.Columns))
			}
			if fix != nil {
				fix(fields)
			}
			if _, err := io.WriteString(w, strings.Join(fields, "\t")+"\n"); err != nil {
				return err
			}
		}
	}}, nil
}

// readCSVRecord reads one record of COPY's CSV output and returns its
// fields in COPY's text format: a quoted field is a value (escaped), an
// unquoted empty one is NULL (\N).
func readCSVRecord(r *bufio.Reader) ([]string, error) {
	var fields []string
	var cur strings.Builder
	quoted, inQuotes, any := false, false, false
	end := func() {
		if !quoted && cur.Len() == 0 {
			fields = append(fields, `\N`)
		} else {
			fields = append(fields, copyEscape(cur.String()))
		}
		cur.Reset()
		quoted = false
	}
	for {
		c, err := r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				if !any {
					return nil, io.EOF
				}
				if inQuotes {
					return nil, errors.New("a quoted field has no end")
				}
				end()
				return fields, nil
			}
			return nil, err
		}
		any = true
		switch {
		case inQuotes && c == '"':
			if n, _ := r.Peek(1); len(n) == 1 && n[0] == '"' {
				r.ReadByte()
				cur.WriteByte('"')
			} else {
				inQuotes = false
			}
		case inQuotes:
			cur.WriteByte(c)
		case c == '"':
			inQuotes, quoted = true, true
		case c == ',':
			end()
		case c == '\n':
			end()
			return fields, nil
		case c == '\r':
		default:
			cur.WriteByte(c)
		}
	}
}

// copyEscape writes a value in COPY's text format.
func copyEscape(s string) string {
	if !strings.ContainsAny(s, "\\\t\n\r") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

type jsonRow struct {
	Table string                     `json:"table"`
	Row   map[string]json.RawMessage `json:"row"`
}

func (f *exportFile) nextJSONL() (*section, error) {
	var line string
	for {
		var err error
		if line, err = f.readLine(); err != nil {
			return nil, err
		}
		if strings.TrimSpace(line) != "" {
			break
		}
	}
	var jr jsonRow
	if err := json.Unmarshal([]byte(line), &jr); err != nil {
		return nil, badFile("line %d: %v", f.line, err)
	}
	t, err := f.table(jr.Table)
	if err != nil {
		return nil, err
	}
	f.pending = &line
	return &section{table: t, write: func(w io.Writer, fix func([]string)) error {
		fields := make([]string, len(t.Columns))
		for {
			line, err := f.readLine()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if strings.TrimSpace(line) == "" {
				continue
			}
			var jr jsonRow
			if err := json.Unmarshal([]byte(line), &jr); err != nil {
				return badFile("line %d: %v", f.line, err)
			}
			if jr.Table != t.Name {
				f.pending = &line
				return nil
			}
			if len(jr.Row) != len(t.Columns) {
				return badFile("line %d: %d values, the header has %d columns for %s", f.line, len(jr.Row), len(t.Columns), t.Name)
			}
			for i, c := range t.Columns {
				raw, ok := jr.Row[c]
				if !ok {
					return badFile("line %d: no value for column %s of %s", f.line, c, t.Name)
				}
				if bytes.Equal(raw, []byte("null")) {
					fields[i] = `\N`
					continue
				}
				var s string
				if err := json.Unmarshal(raw, &s); err != nil {
					return badFile("line %d: column %s: values are strings or null", f.line, c)
				}
				fields[i] = copyEscape(s)
			}
			if fix != nil {
				fix(fields)
			}
			if _, err := io.WriteString(w, strings.Join(fields, "\t")+"\n"); err != nil {
				return err
			}
		}
	}}, nil
}
