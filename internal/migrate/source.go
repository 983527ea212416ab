package migrate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/pressly/goose/v3"
)

// File is one migration file at the root of a directory.
type File struct {
	// Version is the number before the first underscore of Name.
	Version int64
	// Name is the file's base name, e.g. "00001_customers.sql".
	Name string
	// Checksum is the hex SHA-256 of the file's bytes, as recorded on each
	// shard when the file is applied.
	Checksum string
	// HasDown reports whether the file has a "-- +goose Down" section (an
	// empty one counts: it says rolling back needs no SQL).
	HasDown bool
}

// Files lists the migration files (*.sql) at the root of fsys, ascending by
// version, with their checksums. A .sql file whose name does not start with
// a version, or two files with the same version, are errors naming the
// files.
func Files(fsys fs.FS) ([]File, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migration files: %w", err)
	}
	byVersion := map[int64]string{}
	var files []File
	for _, name := range names {
		v, err := goose.NumericComponent(name)
		if err != nil {
			return nil, fmt.Errorf("migration file %s: name it VERSION_name.sql, e.g. %s_%s (`pgtenant migrate create NAME` does): %w",
				name, time.Now().UTC().Format(createLayout), strings.TrimSuffix(name, ".sql"), err)
		}
		if other, ok := byVersion[v]; ok {
			return nil, fmt.Errorf("version %d is in two files, %s and %s: each version is one migration; "+
				"give one of them a new version (`pgtenant migrate create NAME` makes a timestamped file)", v, other, name)
		}
		byVersion[v] = name
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration file: %w", err)
		}
		sum := sha256.Sum256(b)
		files = append(files, File{Version: v, Name: path.Base(name), Checksum: hex.EncodeToString(sum[:]), HasDown: hasDown(b)})
	}
	slices.SortFunc(files, func(a, b File) int { return cmpInt64(a.Version, b.Version) })
	return files, nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// hasDown reports whether b has a "-- +goose Down" annotation line.
func hasDown(b []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, len(b)+1)
	for sc.Scan() {
		if cmd, ok := gooseAnnotation(strings.TrimSpace(sc.Text())); ok && cmd == "down" {
			return true
		}
	}
	return false
}

// Versions lists the migration versions found at the root of fsys,
// ascending, checking the file names the way Up does (duplicate versions are
// an error).
func Versions(fsys fs.FS) ([]int64, error) {
	if _, err := Files(fsys); err != nil {
		return nil, err
	}
	// goose reads file names without touching the database, but wants a
	// *sql.DB; this one can never connect.
	db := sql.OpenDB(noConnector{})
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, plainSQL{fsys}, goose.WithDisableGlobalRegistry(true))
	if err != nil && !errors.Is(err, goose.ErrNoMigrations) {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	if p == nil {
		return nil, nil
	}
	var vs []int64
	for _, s := range p.ListSources() {
		vs = append(vs, s.Version)
	}
	return vs, nil
}

type noConnector struct{}

func (noConnector) Connect(context.Context) (driver.Conn, error) {
	return nil, errors.New("migrate: listing migrations needs no connection")
}
func (noConnector) Driver() driver.Driver { return nil }

// plainSQL presents a .sql file without any goose annotation as a goose file
// whose Up section is the whole file, sent as one batch (so dollar-quoted
// bodies need no StatementBegin/End). Other files pass through unchanged.
type plainSQL struct{ fs.FS }

// annotation is how every goose annotation line starts.
var annotation = []byte("-- +goose")

func (f plainSQL) Open(name string) (fs.File, error) {
	if path.Ext(name) != ".sql" {
		return f.FS.Open(name)
	}
	b, err := fs.ReadFile(f.FS, name)
	if err != nil {
		return nil, err
	}
	if bytes.Contains(b, annotation) {
		return &memFile{name: path.Base(name), Reader: bytes.NewReader(b)}, nil
	}
	var w bytes.Buffer
	w.WriteString("-- +goose Up\n-- +goose StatementBegin\n")
	w.Write(b)
	w.WriteString("\n-- +goose StatementEnd\n")
	return &memFile{name: path.Base(name), Reader: bytes.NewReader(w.Bytes())}, nil
}

// ReadDir keeps directory listing fast for file systems that implement it.
func (f plainSQL) ReadDir(name string) ([]fs.DirEntry, error) { return fs.ReadDir(f.FS, name) }

type memFile struct {
	name string
	*bytes.Reader
}

func (m *memFile) Stat() (fs.FileInfo, error) { return memInfo{m.name, m.Size()}, nil }
func (m *memFile) Close() error               { return nil }

var _ io.ReaderAt = (*memFile)(nil)

type memInfo struct {
	name string
	size int64
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return 0o444 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }

// createLayout is the UTC timestamp Create uses as a version, as Rails does.
const createLayout = "20060102150405"

// ErrInvalidName is returned by Create for a name it will not turn into a
// file name.
var ErrInvalidName = errors.New("invalid migration name")

// validName is a migration name after Create's snake-casing.
var validName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,99}$`)

// Create writes an empty migration file VERSION_name.sql in dir (created if
// missing), VERSION being now in UTC as YYYYMMDDHHMMSS, with "-- +goose Up"
// and "-- +goose Down" sections, and returns its path. name may be
// snake_case, kebab-case or CamelCase ("AddUsers" gives add_users); other
// characters (spaces, dots, slashes, non-ASCII) are refused with
// ErrInvalidName. A file with the same version or the same name part in dir
// is refused too; nothing is overwritten.
func Create(dir, name string, now time.Time) (string, error) {
	snake := snakeCase(name)
	if !validName.MatchString(snake) {
		return "", fmt.Errorf("%w %q: use letters, digits and underscores, starting with a letter, at most 100 (e.g. add_users_email)", ErrInvalidName, name)
	}
	version := now.UTC().Format(createLayout)
	file := version + "_" + snake + ".sql"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create migrations directory: %w", err)
	}
	existing, err := Files(os.DirFS(dir))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", dir, err)
	}
	v, err := strconv.ParseInt(version, 10, 64)
	if err != nil {
		return "", fmt.Errorf("version %s: %w", version, err)
	}
	for _, f := range existing {
		if f.Version == v {
			return "", fmt.Errorf("%s already has version %s (%s); run again in a second", dir, version, f.Name)
		}
		if _, rest, _ := strings.Cut(strings.TrimSuffix(f.Name, ".sql"), "_"); rest == snake {
			return "", fmt.Errorf("%s already has a migration named %s (%s); choose another name", dir, snake, f.Name)
		}
	}
	p := filepath.Join(dir, file)
	w, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", fmt.Errorf("create migration: %w", err)
	}
	if _, err := w.WriteString(skeleton); err != nil {
		w.Close()
		return "", fmt.Errorf("write %s: %w", p, err)
	}
	if err := w.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", p, err)
	}
	return p, nil
}

const skeleton = `-- +goose Up
-- Runs on every shard in one transaction, with search_path set to the shard's
-- schema (shard_NNNN): create tables unqualified.
--
-- Say where each new table keeps its tenant id, on the line before its
-- CREATE TABLE: one of these lines without its first "-- " (row-level
-- security, tenant moves, exports and purges read it; 'pgtenant table --help'):
-- -- pgtenant: tenant_column=customer_id
-- -- pgtenant: parent=invoices via=invoice_id references=id
-- -- pgtenant: shared


-- +goose Down
-- Undoes the Up section, for 'pgtenant migrate down'.

`

// snakeCase turns "AddUsers" and "add-users" into "add_users"; anything else
// passes through for validName to judge.
func snakeCase(s string) string {
	var b strings.Builder
	rs := []rune(s)
	for i, r := range rs {
		switch {
		case r == '-':
			b.WriteRune('_')
		case r <= unicode.MaxASCII && unicode.IsUpper(r):
			if i > 0 && (unicode.IsLower(rs[i-1]) || unicode.IsDigit(rs[i-1]) ||
				(i+1 < len(rs) && unicode.IsUpper(rs[i-1]) && unicode.IsLower(rs[i+1]))) {
				b.WriteRune('_')
			}
			b.WriteRune(unicode.ToLower(r))
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
