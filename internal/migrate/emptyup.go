package migrate

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"strings"
)

// EmptyUpError: a pending migration file whose Up section has no SQL, only
// comments (the skeleton `pgtenant migrate create` writes, not filled in
// yet). Applying it would record its version on every shard, and the SQL
// written into it afterwards would never run (the file's checksum would
// then differ: drift).
type EmptyUpError struct {
	// File is the file's name.
	File string
}

func (e *EmptyUpError) Error() string {
	return fmt.Sprintf("migration %s has no SQL in its Up section (SQLSTATE 42601); hint: write its statements under `-- +goose Up` first "+
		"(SELECT 1; for a migration meant to do nothing), or delete the file; an applied empty migration would keep the SQL written into it later from ever running", e.File)
}

// SQLState is the error's code.
func (e *EmptyUpError) SQLState() string { return "42601" }

// checkEmptyUp refuses the first file pending on some shard whose Up
// section has no statement.
func checkEmptyUp(fsys fs.FS, files []File, statuses []ShardStatus) error {
	pending := map[int64]bool{}
	for _, s := range statuses {
		for _, v := range s.Pending {
			pending[v] = true
		}
	}
	for _, f := range files {
		if !pending[f.Version] {
			continue
		}
		b, err := fs.ReadFile(fsys, f.Name)
		if err != nil {
			return fmt.Errorf("read migration file: %w", err)
		}
		if !upHasSQL(b) {
			return &EmptyUpError{File: f.Name}
		}
	}
	return nil
}

// upHasSQL reports whether b's Up section (the whole file when it has no
// goose annotation) has a line that is neither blank nor a "--" comment.
func upHasSQL(b []byte) bool {
	annotated := bytes.Contains(b, annotation)
	inUp := !annotated
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, len(b)+1)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cmd, ok := gooseAnnotation(line); ok {
			switch cmd {
			case "up":
				inUp = true
			case "down":
				inUp = false
			}
			continue
		}
		if inUp && line != "" && !strings.HasPrefix(line, "--") {
			return true
		}
	}
	return false
}

// gooseAnnotation reads line (trimmed) as goose reads annotations: "--",
// then "+goose", then the word in any case, returned in lower case.
func gooseAnnotation(line string) (cmd string, ok bool) {
	if !strings.HasPrefix(line, "--") || !strings.Contains(line, "+goose") {
		return "", false
	}
	return strings.ToLower(strings.TrimSpace(strings.Replace(strings.TrimPrefix(line, "--"), "+goose", "", 1))), true
}
