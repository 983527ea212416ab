package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/router"
)

// The message memory budget and the TLS requirement come from flags or the
// config file; settings that cannot work are usage errors.
func TestRouterConfigMemoryAndTLS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgtenant.yaml")
	if err := os.WriteFile(path, []byte(`router:
  max_message_memory: 134217728
  message_memory_wait: 3s
  tls_required_users: [alice, bob]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	file, _, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := newRouterCmd(&app{})
	if err := cmd.ParseFlags(nil); err != nil {
		t.Fatal(err)
	}
	// tls_required_users without a certificate is refused...
	var ue usageError
	if _, err := routerConfig(cmd, file.Router, nil); !errors.As(err, &ue) || !strings.Contains(err.Error(), "tls_cert") {
		t.Fatalf("tls_required_users without TLS: %v, want a usage error naming tls_cert", err)
	}
	// ... and accepted with one.
	dir := t.TempDir()
	file.Router.TLSCert, file.Router.TLSKey = writeTestCert(t, dir)
	cfg, err := routerConfig(cmd, file.Router, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxMessageMemory != 128<<20 || cfg.MessageMemoryWait != 3*time.Second || cfg.RequireTLS ||
		strings.Join(cfg.RequireTLSUsers, ",") != "alice,bob" || cfg.TLS == nil {
		t.Errorf("config = %+v", cfg)
	}
	cmd = newRouterCmd(&app{})
	if err := cmd.ParseFlags([]string{"--require-tls", "--max-message-memory", "-1"}); err != nil {
		t.Fatal(err)
	}
	if cfg, err = routerConfig(cmd, file.Router, nil); err != nil || !cfg.RequireTLS || cfg.MaxMessageMemory != -1 {
		t.Fatalf("flags: %+v %v", cfg, err)
	}
	if d := router.DefaultMaxMessageMemory; d != 256<<20 {
		t.Errorf("default budget %d", d)
	}
	for _, args := range [][]string{
		{"--max-message-memory", "0"},
		{"--max-message-memory", "1000"}, // below max-message
		{"--message-memory-wait", "0s"},
		{"--require-tls"}, // no certificate
	} {
		cmd := newRouterCmd(&app{})
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		if _, err := routerConfig(cmd, RouterConfig{}, nil); !errors.As(err, &ue) || !strings.Contains(strings.ReplaceAll(err.Error(), " ", "-"), strings.TrimPrefix(args[0], "--")) {
			t.Errorf("%v: got %v, want a usage error", args, err)
		}
	}
}

// writeTestCert writes a self-signed certificate and its key to dir.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
