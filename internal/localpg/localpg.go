package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotInstalled is returned when the PostgreSQL server binaries cannot be found.
var ErrNotInstalled = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found; install them with `apt-get install postgresql` (Debian/Ubuntu) or put their directory on PATH")

// FindBinDir returns the directory holding initdb and pg_ctl: the one on PATH,
// else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if fileExists(filepath.Join(dir, "pg_ctl")) {
			return dir, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if fileExists(filepath.Join(dir, "initdb")) && fileExists(filepath.Join(dir, "pg_ctl")) {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, m := range matches {
		dir := filepath.Dir(m)
		if fileExists(filepath.Join(dir, "pg_ctl")) {
			return dir, nil
		}
	}
	return "", ErrNotInstalled
}

// EnvClientBin names the directory of the PostgreSQL client programs
// pgtenant runs against nodes (pg_dump, pg_restore). pg_dump refuses a server
// newer than itself, so with nodes newer than the machine's own PostgreSQL it
// must point at a pg_dump of at least their version (.ci/pgnew makes one:
// ROOT/bin-host).
const EnvClientBin = "PGTENANT_PG_BIN"

// FindClientBinDir returns the directory holding pg_dump and pg_restore:
// $PGTENANT_PG_BIN when set, else FindBinDir.
func FindClientBinDir() (string, error) {
	if dir := os.Getenv(EnvClientBin); dir != "" {
		if !fileExists(filepath.Join(dir, "pg_dump")) || !fileExists(filepath.Join(dir, "pg_restore")) {
			return "", fmt.Errorf("%s=%s holds no pg_dump and pg_restore; point it at a PostgreSQL bin directory", EnvClientBin, dir)
		}
		return dir, nil
	}
	return FindBinDir()
}

func versionOf(initdbPath string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdbPath))))
	return v
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Cluster is one PostgreSQL server whose data directory lives at Dir/data.
// The zero value is not usable; create one with New.
type Cluster struct {
	// Dir holds the data directory ("data") and the server log.
	Dir string
	// Port is the TCP port on 127.0.0.1. Zero means pick a free port at Init.
	Port int
	// BinDir holds initdb and pg_ctl. Empty means FindBinDir, or with Root
	// the newest Root/usr/lib/postgresql/*/bin.
	BinDir string
	// Root, when set, is a whole Linux root with PostgreSQL installed in it
	// (a debootstrapped Debian with a newer server than the host's, made by
	// .ci/pgnew): the server's programs run chrooted into Root as the
	// postgres OS user, which takes running as root. Dir must lie inside
	// Root; BinDir is then a path inside Root. The server shares the host's
	// loopback network, so DSN works as usual. Empty means the host's own
	// programs.
	Root string
	// Settings are extra postgresql.conf lines (name → value) written at Init.
	Settings map[string]string
}

// New returns a Cluster rooted at dir. It does no I/O.
func New(dir string, port int) *Cluster {
	return &Cluster{Dir: dir, Port: port}
}

// DataDir is the cluster's data directory.
func (c *Cluster) DataDir() string { return filepath.Join(c.Dir, "data") }

// LogFile is the server log.
func (c *Cluster) LogFile() string { return filepath.Join(c.DataDir(), "server.log") }

// DSN returns a connection string for database db as the superuser "postgres".
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// initDir is where Init runs initdb and writes the settings; it becomes
// DataDir by a rename once both are done, so a data directory is complete
// or absent. One left by an interrupted Init (a killed `dev up`) is removed
// by the next Init, which starts over.
func (c *Cluster) initDir() string { return filepath.Join(c.Dir, "data.initdb") }

// Initialized reports whether the data directory exists.
func (c *Cluster) Initialized() bool {
	return fileExists(filepath.Join(c.DataDir(), "PG_VERSION"))
}

// Init creates the data directory with initdb unless it already exists, and writes
// the settings pgtenant needs (loopback only, wal_level=logical, the port).
// initdb runs in a directory of its own renamed into place at the end, so an
// Init killed half-way leaves no data directory that a later Init would take
// for a complete one: the later Init removes the partial one and runs initdb
// again.
func (c *Cluster) Init(ctx context.Context) error {
	if err := c.resolveBin(); err != nil {
		return err
	}
	if _, err := c.pathInRoot(c.Dir); err != nil {
		return err
	}
	if c.Initialized() {
		if c.Port == 0 {
			p, err := c.readPort()
			if err != nil {
				return err
			}
			c.Port = p
		}
		return nil
	}
	if err := c.clearPartial(); err != nil {
		return err
	}
	if err := c.makeDataDir(); err != nil {
		return err
	}
	if out, err := c.run(ctx, "initdb", "-D", c.initDir(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, out)
	}
	if err := c.writeSettings(); err != nil {
		return err
	}
	if err := os.Rename(c.initDir(), c.DataDir()); err != nil {
		return fmt.Errorf("move the new data directory into place: %w", err)
	}
	return nil
}

// clearPartial removes what an interrupted Init left: the initdb directory,
// and an empty data directory (made before initdb by earlier versions). A
// data directory with files but no PG_VERSION is not Init's to remove: the
// error says what to do.
func (c *Cluster) clearPartial() error {
	if err := os.RemoveAll(c.initDir()); err != nil {
		return fmt.Errorf("remove the data directory of an interrupted initdb: %w", err)
	}
	entries, err := os.ReadDir(c.DataDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read data directory: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("%s holds files but no PG_VERSION: not a PostgreSQL data directory, or one whose initdb was interrupted; remove it (rm -rf %s) and run again", c.DataDir(), c.DataDir())
	}
	return os.Remove(c.DataDir())
}

// writeSettings appends pgtenant's settings and c.Settings to the new data
// directory's postgresql.conf.
func (c *Cluster) writeSettings() error {
	conf := map[string]string{
		"listen_addresses":                "'127.0.0.1'",
		"port":                            strconv.Itoa(c.Port),
		"unix_socket_directories":         "''",
		"wal_level":                       "logical",
		"max_connections":                 "300",
		"max_wal_senders":                 "20",
		"max_replication_slots":           "300", // an import cutover keeps a slot per shard on its node until finish
		"max_logical_replication_workers": "8",
		"shared_buffers":                  "64MB",
		"logging_collector":               "off",
	}
	for k, v := range c.Settings {
		conf[k] = v
	}
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("\n# written by pgtenant\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, conf[k])
	}
	f, err := os.OpenFile(filepath.Join(c.initDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(b.String()); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	return f.Sync()
}

// readPort reads the port back from postgresql.conf (the last "port =" line wins).
func (c *Cluster) readPort() (int, error) {
	data, err := os.ReadFile(filepath.Join(c.DataDir(), "postgresql.conf"))
	if err != nil {
		return 0, fmt.Errorf("read postgresql.conf: %w", err)
	}
	port := 0
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "port = ") {
			if p, err := strconv.Atoi(strings.TrimPrefix(line, "port = ")); err == nil {
				port = p
			}
		}
	}
	if port == 0 {
		return 0, fmt.Errorf("no port in %s: the data directory was not made by pgtenant, or its initdb was interrupted; remove %s and run again", filepath.Join(c.DataDir(), "postgresql.conf"), c.DataDir())
	}
	return port, nil
}

// Running reports whether the server answers pg_ctl status.
func (c *Cluster) Running(ctx context.Context) bool {
	if c.resolveBin() != nil || !c.Initialized() {
		return false
	}
	_, err := c.run(ctx, "pg_ctl", "status", "-D", c.DataDir())
	return err == nil
}

// Start starts the server and waits until it accepts connections. Starting a
// running cluster is a no-op.
func (c *Cluster) Start(ctx context.Context) error {
	if err := c.resolveBin(); err != nil {
		return err
	}
	if c.Running(ctx) {
		return nil
	}
	out, err := c.run(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", c.DataDir(), "-l", c.LogFile())
	if err != nil {
		logTail, _ := os.ReadFile(c.LogFile())
		if len(logTail) > 2000 {
			logTail = logTail[len(logTail)-2000:]
		}
		return fmt.Errorf("start postgres in %s: %w: %s\n%s", c.DataDir(), err, out, logTail)
	}
	return nil
}

// StartOnFreePort starts the server like Start; when its port was taken
// meanwhile by another program, it moves the cluster to a free port (kept in
// postgresql.conf) and tries again, up to three times.
func (c *Cluster) StartOnFreePort(ctx context.Context) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = c.Start(ctx); err == nil || !strings.Contains(err.Error(), "Address already in use") {
			return err
		}
		p, perr := FreePort()
		if perr != nil {
			return err
		}
		f, ferr := os.OpenFile(filepath.Join(c.DataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if ferr != nil {
			return err
		}
		fmt.Fprintf(f, "port = %d\n", p)
		f.Close()
		c.Port = p
	}
	return err
}

// Stop stops the server (fast shutdown). Stopping a stopped cluster is a no-op.
func (c *Cluster) Stop(ctx context.Context) error { return c.stop(ctx, "fast") }

// Kill stops the server at once (immediate shutdown: no checkpoint, as after
// a crash), for a cluster about to be removed. Killing a stopped cluster is
// a no-op.
func (c *Cluster) Kill(ctx context.Context) error { return c.stop(ctx, "immediate") }

func (c *Cluster) stop(ctx context.Context, mode string) error {
	if !c.Running(ctx) {
		return nil
	}
	if out, err := c.run(ctx, "pg_ctl", "stop", "-w", "-m", mode, "-D", c.DataDir()); err != nil {
		return fmt.Errorf("stop postgres in %s: %w: %s", c.DataDir(), err, out)
	}
	return nil
}

func (c *Cluster) resolveBin() error {
	if c.BinDir != "" {
		return nil
	}
	if c.Root != "" {
		dir, err := findRootBinDir(c.Root)
		if err != nil {
			return err
		}
		c.BinDir = dir
		return nil
	}
	dir, err := FindBinDir()
	if err != nil {
		return err
	}
	c.BinDir = dir
	return nil
}

// run runs program name from BinDir as the postgres OS user when root. With
// Root it runs chrooted there, and each argument that is a path under Root
// (or has one after "=") is passed as the path inside it.
func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	home := c.Dir
	if c.Root != "" {
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("run %s in %s: starting PostgreSQL from a root directory (chroot) takes running as root", name, c.Root)
		}
		args = c.argsInRoot(args)
		h, err := c.pathInRoot(c.Dir)
		if err != nil {
			return nil, err
		}
		home = h
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	cred, err := runAsCredential()
	if err != nil {
		return nil, err
	}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Chroot: c.Root}
		cmd.Env = append(cmd.Env, "HOME="+home, "USER=postgres")
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// pg_ctl start leaves the server holding our pipes; don't wait on them forever.
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil
	}
	return out.Bytes(), err
}

// runAsCredential returns the postgres OS user's credential when running as
// root (Postgres refuses to run as root), else nil.
func runAsCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a \"postgres\" OS user to run the server (Debian's postgresql package creates it): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// checkTraversable makes sure every parent of dir can be entered by others,
// since the server runs as another user.
func checkTraversable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("directory %s is not traversable by the postgres user (mode %v); choose a directory elsewhere or run `chmod o+x %s`", p, fi.Mode().Perm(), p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// findRootBinDir returns the newest usr/lib/postgresql/*/bin holding initdb
// and pg_ctl inside root, as a path inside root.
func findRootBinDir(root string) (string, error) {
	matches, _ := filepath.Glob(filepath.Join(root, "usr/lib/postgresql/*/bin/initdb"))
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, m := range matches {
		if fileExists(filepath.Join(filepath.Dir(m), "pg_ctl")) {
			return strings.TrimPrefix(filepath.Dir(m), filepath.Clean(root)), nil
		}
	}
	return "", fmt.Errorf("no PostgreSQL server (usr/lib/postgresql/*/bin/initdb) in root %s; build one with .ci/pgnew", root)
}

// pathInRoot returns host path p as seen inside Root (p itself without Root).
func (c *Cluster) pathInRoot(p string) (string, error) {
	if c.Root == "" {
		return p, nil
	}
	root, err := filepath.Abs(c.Root)
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(root, abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("directory %s is outside the PostgreSQL root %s; a server run from a root keeps its files inside it", p, c.Root)
	}
	return "/" + filepath.ToSlash(rel), nil
}

// argsInRoot rewrites the arguments that are paths under Root (alone, or
// after "--opt=") into paths inside it.
func (c *Cluster) argsInRoot(args []string) []string {
	root := filepath.Clean(c.Root) + "/"
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		prefix, path := "", a
		if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "-") {
			prefix, path = k+"=", v
		}
		if strings.HasPrefix(path, root) {
			out[i] = prefix + "/" + strings.TrimPrefix(path, root)
		}
	}
	return out
}

// makeDataDir picks a free port when none is set and creates c's directory
// (traversable) and the directory initdb fills (initDir), owned by the user
// Postgres runs as.
func (c *Cluster) makeDataDir() error {
	if c.Port == 0 {
		p, err := FreePort()
		if err != nil {
			return err
		}
		c.Port = p
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", c.Dir, err)
	}
	if err := os.Chmod(c.Dir, 0o755); err != nil {
		return fmt.Errorf("chmod %s: %w", c.Dir, err)
	}
	if err := os.MkdirAll(c.initDir(), 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if cred, err := runAsCredential(); err != nil {
		return err
	} else if cred != nil {
		if err := checkTraversable(c.Dir); err != nil {
			return err
		}
		if err := os.Chown(c.initDir(), int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("chown data dir: %w", err)
		}
	}
	return nil
}
