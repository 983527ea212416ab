package router

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func selfSigned(t *testing.T) *tls.Config {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func TestTLS(t *testing.T) {
	s := startRouter(t, Config{TLS: selfSigned(t)}, nil)
	url := strings.Replace(routerURL(s, "t5"), "sslmode=disable", "sslmode=require", 1)
	c, err := pgx.Connect(ctx(t), url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx(t))
	var sh int
	if err := c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 5 {
		t.Fatalf("over TLS: %d %v", sh, err)
	}
	// Without a certificate, sslmode=require is refused and prefer falls back.
	plain := startRouter(t, Config{}, nil)
	if _, err := pgx.Connect(ctx(t), strings.Replace(routerURL(plain, "t5"), "sslmode=disable", "sslmode=require", 1)); err == nil {
		t.Fatal("sslmode=require succeeded without TLS")
	}
	c2, err := pgx.Connect(ctx(t), strings.Replace(routerURL(plain, "t5"), "sslmode=disable", "sslmode=prefer", 1))
	if err != nil {
		t.Fatal(err)
	}
	c2.Close(ctx(t))
}

func TestMaxClients(t *testing.T) {
	s := startRouter(t, Config{MaxClients: 2}, nil)
	connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	_, err := pgx.Connect(ctx(t), routerURL(s, "t1"))
	if got := pgCode(err); got != "53300" {
		t.Fatalf("third client: %v, want 53300", err)
	}
}
