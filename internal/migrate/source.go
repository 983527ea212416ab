package migrate

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"time"

	"github.com/pressly/goose/v3"
)

// Versions lists the migration versions found at the root of fsys,
// ascending, checking the file names the way Up does (duplicate versions are
// an error).
func Versions(fsys fs.FS) ([]int64, error) {
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
