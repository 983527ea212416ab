package nodedsn

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func lookup(m map[string]string) Lookup {
	return func(name string) (string, bool) { v, ok := m[name]; return v, ok }
}

func TestExpand(t *testing.T) {
	secrets := lookup(map[string]string{"PW": `p@ss w'o\rd/?&%`, "HOST": "db1", "EMPTY": ""})
	for _, tc := range []struct {
		dsn      string
		password string // what pgx reads from the expanded DSN
		host     string
	}{
		{`host=db1 user=app password=$PW dbname=app`, `p@ss w'o\rd/?&%`, "db1"},
		{`host=db1 user=app password=${PW} dbname=app`, `p@ss w'o\rd/?&%`, "db1"},
		{`host=db1 user=app password='${PW}' dbname=app`, `p@ss w'o\rd/?&%`, "db1"},
		{`host=$HOST user=app password = $PW`, `p@ss w'o\rd/?&%`, "db1"},
		{`postgres://app:$PW@db1:5432/app?sslmode=disable`, `p@ss w'o\rd/?&%`, "db1"},
		{`postgres://app:${PW}@db1/app`, `p@ss w'o\rd/?&%`, "db1"},
		{`postgresql://app@db1/app?password=$PW&sslmode=disable`, `p@ss w'o\rd/?&%`, "db1"},
		{`postgres://app:%24%7BPW%7D@db1/app`, `p@ss w'o\rd/?&%`, "db1"},
		// A $ inside a longer value is a literal.
		{`host=db1 password=pa$PWword`, `pa$PWword`, "db1"},
		{`postgres://app:pa$PW@db1/app`, `pa$PW`, "db1"},
		{`host=db1 password=$EMPTY`, ``, "db1"},
	} {
		got, err := Expand(tc.dsn, secrets)
		if err != nil {
			t.Errorf("Expand(%q): %v", tc.dsn, err)
			continue
		}
		cfg, err := pgconn.ParseConfig(got)
		if err != nil {
			t.Errorf("Expand(%q) = a DSN pgx cannot parse: %v", tc.dsn, err)
			continue
		}
		if cfg.Password != tc.password || cfg.Host != tc.host {
			t.Errorf("Expand(%q): pgx reads password %q host %q, want %q %q", tc.dsn, cfg.Password, cfg.Host, tc.password, tc.host)
		}
	}
	// Without references the DSN is untouched.
	for _, dsn := range []string{`host=db1 password=secret`, `postgres://a:b@c/d`} {
		if got, err := Expand(dsn, secrets); err != nil || got != dsn {
			t.Errorf("Expand(%q) = %q, %v", dsn, got, err)
		}
	}
	// A missing secret names the reference, not any value.
	_, err := Expand(`host=db1 password=$NODE9_PASSWORD`, secrets)
	if !errors.Is(err, ErrMissingSecret) || !strings.Contains(err.Error(), "$NODE9_PASSWORD") {
		t.Errorf("missing secret: %v", err)
	}
	if _, err := Expand(`host=db1 password='$PW`, secrets); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestLiteralPassword(t *testing.T) {
	for dsn, want := range map[string]bool{
		`host=db1 user=app password=secret`:                   true,
		`host=db1 user=app password='se cret'`:                true,
		`host=db1 user=app password=$NODE1_PASSWORD`:          false,
		`host=db1 user=app password=${NODE1_PASSWORD}`:        false,
		`host=db1 user=app passfile=/etc/pgtenant/pgpass`:     false,
		`host=db1 user=app`:                                   false,
		`postgres://app:secret@db1/app`:                       true,
		`postgres://app:$NODE1_PASSWORD@db1/app`:              false,
		`postgres://app@db1/app`:                              false,
		`postgres://app@db1/app?password=secret`:              true,
		`postgres://app@db1/app?password=%24NODE1_PASSWORD`:   false,
		`postgresql://app:@db1/app`:                           false,
		`postgres://app@db1/app?sslmode=require&passfile=/pp`: false,
	} {
		if got := LiteralPassword(dsn); got != want {
			t.Errorf("LiteralPassword(%q) = %v, want %v", dsn, got, want)
		}
	}
}

func TestLoadFileAndChain(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secrets")
	body := "# node passwords\n\nNODE1_PASSWORD=s3cr=t with spaces\r\nNODE2_PASSWORD=two\n"
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODE2_PASSWORD", "from-env")
	t.Setenv("NODE3_PASSWORD", "three")
	chain := Chain(l, Env())
	for name, want := range map[string]string{"NODE1_PASSWORD": "s3cr=t with spaces", "NODE2_PASSWORD": "two", "NODE3_PASSWORD": "three"} {
		if got, ok := chain(name); !ok || got != want {
			t.Errorf("%s = %q %v, want %q", name, got, ok, want)
		}
	}
	if _, ok := chain("NODE4_PASSWORD"); ok {
		t.Error("NODE4_PASSWORD found")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable secrets file: %v", err)
	}
	if err := os.WriteFile(path, []byte("not a pair\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(path); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad line: %v", err)
	}
}

func TestWithPassword(t *testing.T) {
	for _, dsn := range []string{`host=db1 user=app dbname=app`, `postgres://app@db1/app`, `postgres://app@db1/app?sslmode=disable`} {
		cfg, err := pgconn.ParseConfig(WithPassword(dsn, `a b'c\d&e`))
		if err != nil || cfg.Password != `a b'c\d&e` {
			t.Errorf("WithPassword(%q): %v %q", dsn, err, cfg.Password)
		}
	}
}

func TestRedactKeywords(t *testing.T) {
	for dsn, want := range map[string]string{
		`host=db1 user=app password=secret`:            `host=db1 user=app password=xxxxx`,
		`host=db1 password='se cr\'et' dbname=app`:     `host=db1 password=xxxxx dbname=app`,
		`host=db1 password=$NODE1_PASSWORD dbname=app`: `host=db1 password=$NODE1_PASSWORD dbname=app`,
		`host=db1 application_name='my app'`:           `host=db1 application_name='my app'`,
	} {
		if got, ok := RedactKeywords(dsn); !ok || got != want {
			t.Errorf("RedactKeywords(%q) = %q %v, want %q", dsn, got, ok, want)
		}
	}
	if _, ok := RedactKeywords(`host=db1 password='unterminated`); ok {
		t.Error("unterminated quote parsed")
	}
}
