package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	_ "embed"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/localpg"
)

// overrideRB is loaded by rspec before the specs (see the package comment).
//
//go:embed override.rb
var overrideRB []byte

// suiteCluster is the one-node local cluster: the direct run uses the
// node's database "test", the routers one tenant per mode in the node's
// shards.
type suiteCluster struct {
	*suiterun.Cluster
	tlsDir  string // ca.crt, server.crt/key, client.crt/key
	node    devcluster.Node
	tenants map[string]string // by mode
}

// startCluster starts the cluster, turns TLS on in the node with fresh
// certificates, creates the direct run's database and registers a tenant
// per router mode, each in a shard of its own.
func startCluster(ctx context.Context, dir string) (*suiteCluster, error) {
	scl, err := suiterun.StartCluster(ctx, filepath.Join(dir, "cluster"), 1, 2)
	if err != nil {
		return nil, err
	}
	cl := &suiteCluster{Cluster: scl, tlsDir: filepath.Join(dir, "tls"), node: scl.Nodes[0], tenants: map[string]string{}}
	if err := cl.setup(ctx); err != nil {
		cl.Down()
		return nil, err
	}
	return cl, nil
}

func (cl *suiteCluster) setup(ctx context.Context) error {
	if err := writeCerts(cl.tlsDir); err != nil {
		return err
	}
	// The server reads its key as the postgres OS user, from its data
	// directory (it insists on the key's owner and mode).
	data := filepath.Join(cl.node.Dir, "data")
	owner, err := os.Stat(data)
	if err != nil {
		return err
	}
	st := owner.Sys().(*syscall.Stat_t)
	for _, f := range []string{"server.crt", "server.key", "ca.crt"} {
		b, err := os.ReadFile(filepath.Join(cl.tlsDir, f))
		if err != nil {
			return err
		}
		p := filepath.Join(data, "rubypg-"+f)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return err
		}
		if err := os.Chown(p, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
	}
	if err := suiterun.Exec(ctx, localpg.New(cl.node.Dir, cl.node.Port).DSN("postgres"), "prepare the node",
		"ALTER SYSTEM SET ssl_cert_file = 'rubypg-server.crt'",
		"ALTER SYSTEM SET ssl_key_file = 'rubypg-server.key'",
		"ALTER SYSTEM SET ssl_ca_file = 'rubypg-ca.crt'",
		"ALTER SYSTEM SET ssl = on",
		"SELECT pg_reload_conf()",
		"CREATE DATABASE test",
	); err != nil {
		return err
	}
	shards := map[string]int{}
	for i, mode := range []string{"session", "transaction"} {
		cl.tenants[mode] = "rubypg-" + mode
		shards[cl.tenants[mode]] = i
	}
	return cl.AddTenants(ctx, shards)
}

// writeCerts writes a CA and, signed by it, a server certificate for
// localhost and 127.0.0.1 and a client certificate, as PEM files into dir.
func writeCerts(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rubypgsuite CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("create the CA certificate: %w", err)
	}
	if err := writePEM(filepath.Join(dir, "ca.crt"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	for i, leaf := range []struct {
		name string
		tmpl x509.Certificate
	}{
		{"server", x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		{"client", x509.Certificate{Subject: pkix.Name{CommonName: "postgres"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		t := leaf.tmpl
		t.SerialNumber = big.NewInt(int64(i + 2))
		t.NotBefore, t.NotAfter = now.Add(-time.Hour), now.Add(48*time.Hour)
		t.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, &t, ca, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("create the %s certificate: %w", leaf.name, err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, leaf.name+".crt"), "CERTIFICATE", der); err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, leaf.name+".key"), "EC PRIVATE KEY", kb); err != nil {
			return err
		}
	}
	return nil
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

// startRouter starts a router in mode with the cluster's config plus the
// TLS certificate, logging to the work directory's router-MODE.log.
func startRouter(ctx context.Context, bin string, cl *suiteCluster, mode string) (*suiterun.Router, error) {
	base, err := os.ReadFile(filepath.Join(cl.Dir, devcluster.ConfigFile))
	if err != nil {
		return nil, err
	}
	// The dev config's last section is router:.
	cfg := fmt.Sprintf("%s  tls_cert: %q\n  tls_key: %q\n", base, filepath.Join(cl.tlsDir, "server.crt"), filepath.Join(cl.tlsDir, "server.key"))
	cfgPath := filepath.Join(filepath.Dir(cl.Dir), "router-"+mode+".yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	r, err := suiterun.StartRouter(ctx, bin, filepath.Join(filepath.Dir(cl.Dir), "router-"+mode+".log"),
		"--config", cfgPath, "--pool-mode", mode, "--auth", "trust", "--log-level", "info", "--database", "test",
		// As on the server (idle_in_transaction_session_timeout 0): the
		// helper keeps its shared connection in BEGIN across slow specs.
		"--idle-in-transaction-timeout", "0")
	if err != nil {
		return nil, fmt.Errorf("router in %s mode: %w", mode, err)
	}
	return r, nil
}
