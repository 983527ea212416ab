package localpg

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStartFromRoot starts a server chrooted into a root directory
// (Cluster.Root): the root made by .ci/pgnew when PGTENANT_TEST_PGROOT names
// one, else a small root assembled here from the machine's own PostgreSQL
// (its programs, their libraries, share files, /bin/sh, /dev/null and a
// postgres user), so the chroot path is tested on every run. The server's
// data directory is its path inside the root.
func TestStartFromRoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, bin := os.Getenv("PGTENANT_TEST_PGROOT"), os.Getenv("PGTENANT_TEST_PGBIN")
	if root == "" && os.Geteuid() == 0 {
		root = makeRoot(t)
	}
	if root == "" {
		// Not root: a root cannot be entered; the error says why.
		c := &Cluster{Dir: "/nonexistent/x", Root: "/nonexistent", BinDir: "/usr/bin"}
		_, err := c.run(ctx, "initdb")
		if err == nil || !strings.Contains(err.Error(), "takes running as root") {
			t.Fatalf("run in a root as a non-root user: err %v, want one saying it takes running as root", err)
		}
		return
	}
	dir, err := os.MkdirTemp(filepath.Join(root, "tmp"), "pgtenant-localpg-root-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	defer os.RemoveAll(dir)

	outside := &Cluster{Dir: t.TempDir(), Root: root, BinDir: bin}
	if err := outside.Init(ctx); err == nil || !strings.Contains(err.Error(), "outside the PostgreSQL root") {
		t.Fatalf("Init of a directory outside the root: err %v, want one saying it is outside", err)
	}

	c := &Cluster{Dir: dir, Root: root, BinDir: bin}
	if err := c.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Stop(context.Background())
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var dataDir, wal string
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory'), current_setting('wal_level')").Scan(&dataDir, &wal); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	want, err := c.pathInRoot(c.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	if dataDir != want || wal != "logical" {
		t.Fatalf("data_directory %q, wal_level %q; want %q, logical", dataDir, wal, want)
	}
	if !c.Running(ctx) {
		t.Fatal("Running = false for a started server")
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Running(ctx) {
		t.Fatal("still running after Stop")
	}
}

func TestArgsInRoot(t *testing.T) {
	c := &Cluster{Root: "/opt/pg18/"}
	got := c.argsInRoot([]string{"-D", "/opt/pg18/tmp/x/data", "--pgdata=/opt/pg18/tmp/y", "-l", "/tmp/z", "/opt/pg18x/a", "-c", "a=/opt/pg18/b"})
	want := []string{"-D", "/tmp/x/data", "--pgdata=/tmp/y", "-l", "/tmp/z", "/opt/pg18x/a", "-c", "a=/opt/pg18/b"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("argsInRoot = %q, want %q", got, want)
	}
	if p, err := c.pathInRoot("/opt/pg18/tmp/x"); err != nil || p != "/tmp/x" {
		t.Fatalf("pathInRoot = %q, %v; want /tmp/x", p, err)
	}
	if _, err := c.pathInRoot("/opt/pg18x/tmp"); err == nil {
		t.Fatal("pathInRoot of a sibling directory succeeded")
	}
}

// makeRoot assembles a root directory that runs the machine's own
// PostgreSQL: the server programs with their libraries (as ldd lists them),
// the server's lib and share directories, /usr/share/zoneinfo, /bin/sh,
// /dev/null and the host's postgres user. Files are hard links where the
// file system allows. The root is removed when t ends.
func makeRoot(t *testing.T) string {
	t.Helper()
	bin, err := FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.MkdirTemp("", "pgtenant-localpg-chroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	// Merged /usr: the top-level directories are relative links into usr/,
	// so nothing written below them leaves the root.
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		if fi, err := os.Lstat("/" + d); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			mustT(t, os.MkdirAll(filepath.Join(root, "usr", d), 0o755))
			mustT(t, os.Symlink("usr/"+d, filepath.Join(root, d)))
		}
	}
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	progs := []string{filepath.Join(bin, "postgres"), filepath.Join(bin, "initdb"), filepath.Join(bin, "pg_ctl"), sh}
	files := append([]string{}, progs...)
	for _, p := range progs {
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", p, err)
		}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			for _, f := range strings.Fields(sc.Text()) {
				if strings.HasPrefix(f, "/") {
					files = append(files, f)
				}
			}
		}
	}
	for _, f := range files {
		copyInto(t, root, f)
	}
	mustT(t, os.Symlink(filepath.Base(sh), filepath.Join(root, "usr/bin/sh")))
	ver := filepath.Base(filepath.Dir(bin))
	for _, d := range []string{filepath.Join(filepath.Dir(bin), "lib"), "/usr/share/postgresql/" + ver, "/usr/share/zoneinfo"} {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		err := filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() {
				return err
			}
			if fi.Mode()&os.ModeSymlink != 0 { // zoneinfo's aliases: kept as links
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				dst := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					return err
				}
				return os.Symlink(target, dst)
			}
			copyInto(t, root, p)
			return nil
		})
		mustT(t, err)
	}
	for _, d := range []string{"etc", "dev/shm", "tmp"} {
		mustT(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	mustT(t, os.Chmod(filepath.Join(root, "tmp"), 0o1777))
	mustT(t, os.Chmod(filepath.Join(root, "dev/shm"), 0o1777))
	mustT(t, syscall.Mknod(filepath.Join(root, "dev/null"), syscall.S_IFCHR|0o666, 1<<8|3))
	mustT(t, os.Chmod(filepath.Join(root, "dev/null"), 0o666))
	for _, f := range []string{"passwd", "group"} {
		host, err := os.ReadFile("/etc/" + f)
		mustT(t, err)
		var keep []string
		for _, line := range strings.Split(string(host), "\n") {
			if strings.HasPrefix(line, "root:") || strings.HasPrefix(line, "postgres:") {
				keep = append(keep, line)
			}
		}
		mustT(t, os.WriteFile(filepath.Join(root, "etc", f), []byte(strings.Join(keep, "\n")+"\n"), 0o644))
	}
	return root
}

// copyInto puts host file p (symlinks followed) at the same path in root,
// as a hard link or a copy. It refuses a destination that resolves outside root.
func copyInto(t *testing.T, root, p string) {
	t.Helper()
	dst := filepath.Join(root, p)
	mustT(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	parent, err := filepath.EvalSymlinks(filepath.Dir(dst))
	mustT(t, err)
	if !strings.HasPrefix(parent+"/", root+"/") {
		t.Fatalf("copy %s: %s resolves outside the root %s", p, filepath.Dir(dst), root)
	}
	dst = filepath.Join(parent, filepath.Base(dst))
	if _, err := os.Lstat(dst); err == nil {
		return
	}
	src, err := filepath.EvalSymlinks(p)
	mustT(t, err)
	if os.Link(src, dst) == nil {
		return
	}
	in, err := os.Open(src)
	mustT(t, err)
	defer in.Close()
	fi, err := in.Stat()
	mustT(t, err)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
	mustT(t, err)
	defer out.Close()
	_, err = io.Copy(out, in)
	mustT(t, err)
}

func mustT(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
