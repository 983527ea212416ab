package pgtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

var tlsMu sync.Mutex

// EnableTLS turns TLS on in the server (ssl = on, with a fresh self-signed
// certificate for 127.0.0.1) and waits until it accepts TLS connections.
// Connections with sslmode=disable are unaffected. Calling it again does
// nothing.
func (s *Server) EnableTLS(ctx context.Context) error {
	tlsMu.Lock()
	defer tlsMu.Unlock()
	dir := s.Cluster.DataDir()
	crt, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if _, err := os.Stat(crt); err == nil {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create certificate: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	for _, f := range []struct {
		path string
		data []byte
	}{
		{keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})},
		{crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})},
	} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return err
		}
		if err := os.Chown(f.path, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", f.path, err)
		}
	}
	c, err := pgx.Connect(ctx, s.Cluster.DSN("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "ALTER SYSTEM SET ssl = on"); err != nil {
		return err
	}
	if _, err := c.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return err
	}
	tlsDSN := strings.Replace(s.Cluster.DSN("postgres"), "sslmode=disable", "sslmode=require", 1)
	for {
		tc, err := pgx.Connect(ctx, tlsDSN)
		if err == nil {
			tc.Close(ctx)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server does not accept TLS after reload: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
