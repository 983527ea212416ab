package router

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// errTLSRequired refuses a client without TLS that must use it.
var errTLSRequired = errors.New("client without TLS refused")

// requiresTLS reports whether user must connect with TLS.
func (s *Server) requiresTLS(user string) bool {
	return s.cfg.RequireTLS || s.tlsUsers[user]
}

// tlsRequiredError is the FATAL error for a client without TLS that must
// use it (PostgreSQL says "no pg_hba.conf entry ... no encryption").
func tlsRequiredError(user string) *wire.Error {
	return &wire.Error{Severity: "FATAL", Code: "28000", Message: fmt.Sprintf("connection without TLS refused for user %q", user),
		Hint: "Connect with sslmode=require (or verify-ca, verify-full): this router requires TLS (router.tls_required / --require-tls, or router.tls_required_users)."}
}

// tlsConfig returns the TLS configuration for one client connection and a
// function that gives, after the handshake, the tls-server-end-point data of
// the certificate presented (nil when unknown or undefined for it).
func (s *Server) tlsConfig() (*tls.Config, func() []byte) {
	if s.cbindFixed {
		return s.cfg.TLS, func() []byte { return s.cbind }
	}
	base := s.cfg.TLS
	if base.GetConfigForClient != nil {
		return base, func() []byte { return nil } // the certificate cannot be known
	}
	var leaf []byte
	c := base.Clone()
	c.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert, err := pickCertificate(base, hello)
		if cert != nil && len(cert.Certificate) > 0 {
			leaf = cert.Certificate[0]
		}
		return cert, err
	}
	return c, func() []byte {
		if leaf == nil {
			return nil
		}
		d, _ := wire.TLSServerEndPoint(leaf)
		return d
	}
}

// pickCertificate chooses the certificate for hello as crypto/tls does.
func pickCertificate(c *tls.Config, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c.GetCertificate != nil {
		return c.GetCertificate(hello)
	}
	for i := range c.Certificates {
		if hello.SupportsCertificate(&c.Certificates[i]) == nil {
			return &c.Certificates[i], nil
		}
	}
	if len(c.Certificates) == 0 {
		return nil, errors.New("no TLS certificate configured")
	}
	return &c.Certificates[0], nil
}
