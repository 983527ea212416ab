package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// Authentication request codes (the int32 after 'R').
const (
	AuthOK           = 0
	AuthCleartext    = 3
	AuthMD5          = 5
	AuthSASL         = 10
	AuthSASLContinue = 11
	AuthSASLFinal    = 12
)

// ErrAuthFailed reports a wrong password or a failed SCRAM proof.
var ErrAuthFailed = errors.New("password authentication failed")

// ErrChannelBinding reports a SCRAM exchange whose channel binding is
// missing, of an unsupported type, or does not match the TLS connection.
var ErrChannelBinding = errors.New("scram channel binding check failed")

// SCRAMMechanisms is the AuthenticationSASL payload offering SCRAM-SHA-256.
var SCRAMMechanisms = []byte("SCRAM-SHA-256\x00\x00")

// SCRAMPlusMechanisms is the AuthenticationSASL payload offering
// SCRAM-SHA-256-PLUS (channel binding) and SCRAM-SHA-256, as PostgreSQL
// offers them over TLS.
var SCRAMPlusMechanisms = []byte("SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")

// TLSServerEndPoint returns the tls-server-end-point channel binding data
// (RFC 5929) of a server certificate in DER form: its hash with the hash
// function of its signature algorithm, SHA-256 for MD5 and SHA-1.
func TLSServerEndPoint(der []byte) ([]byte, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse server certificate: %w", err)
	}
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1,
		x509.SHA256WithRSA, x509.SHA256WithRSAPSS, x509.ECDSAWithSHA256, x509.DSAWithSHA256:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		h = sha512.New()
	default:
		return nil, fmt.Errorf("tls-server-end-point is undefined for certificate signature algorithm %v", cert.SignatureAlgorithm)
	}
	h.Write(der)
	return h.Sum(nil), nil
}

// SCRAMKeys are the per-user secrets a SCRAM server keeps (what PostgreSQL
// stores in pg_authid).
type SCRAMKeys struct {
	Salt       []byte
	Iterations int
	StoredKey  []byte
	ServerKey  []byte
}

// DeriveSCRAMKeys computes SCRAM-SHA-256 keys for password with a fresh
// random salt. It costs iterations HMAC rounds: cache the result.
func DeriveSCRAMKeys(password string, iterations int) (SCRAMKeys, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return SCRAMKeys{}, fmt.Errorf("scram salt: %w", err)
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, 32)
	if err != nil {
		return SCRAMKeys{}, fmt.Errorf("scram salted password: %w", err)
	}
	ck := hmacSHA256(salted, []byte("Client Key"))
	sk := sha256.Sum256(ck)
	return SCRAMKeys{Salt: salt, Iterations: iterations, StoredKey: sk[:], ServerKey: hmacSHA256(salted, []byte("Server Key"))}, nil
}

// scramPrefix starts a PostgreSQL SCRAM-SHA-256 verifier.
const scramPrefix = "SCRAM-SHA-256$"

// SCRAMVerifier derives keys for password with a fresh random salt and
// returns them in PostgreSQL's stored form (what pg_authid.rolpassword holds):
// "SCRAM-SHA-256$<iterations>:<salt base64>$<StoredKey base64>:<ServerKey base64>".
// ParseSCRAMVerifier reads it back. Iterations below 1 mean 4096, PostgreSQL's default.
func SCRAMVerifier(password string, iterations int) (string, error) {
	if iterations < 1 {
		iterations = 4096
	}
	k, err := DeriveSCRAMKeys(password, iterations)
	if err != nil {
		return "", err
	}
	return k.Verifier(), nil
}

// Verifier returns k in PostgreSQL's stored verifier form (see SCRAMVerifier).
func (k SCRAMKeys) Verifier() string {
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s%d:%s$%s:%s", scramPrefix, k.Iterations, enc(k.Salt), enc(k.StoredKey), enc(k.ServerKey))
}

// ParseSCRAMVerifier parses a SCRAM-SHA-256 verifier in PostgreSQL's stored
// form (see SCRAMVerifier), so a SCRAM exchange can be checked without the
// plaintext password.
func ParseSCRAMVerifier(s string) (SCRAMKeys, error) {
	bad := func(what string) (SCRAMKeys, error) {
		return SCRAMKeys{}, fmt.Errorf("parse scram verifier: %s", what)
	}
	rest, ok := strings.CutPrefix(s, scramPrefix)
	if !ok {
		return bad("missing SCRAM-SHA-256$ prefix")
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("missing $ before the keys")
	}
	iterS, saltS, ok := strings.Cut(params, ":")
	if !ok {
		return bad("missing : between iterations and salt")
	}
	iter, err := strconv.Atoi(iterS)
	if err != nil || iter < 1 {
		return bad(fmt.Sprintf("invalid iteration count %q", iterS))
	}
	storedS, serverS, ok := strings.Cut(keys, ":")
	if !ok {
		return bad("missing : between StoredKey and ServerKey")
	}
	dec := base64.StdEncoding.DecodeString
	salt, err := dec(saltS)
	if err != nil || len(salt) == 0 {
		return bad("invalid salt")
	}
	stored, err := dec(storedS)
	if err != nil || len(stored) != sha256.Size {
		return bad("invalid StoredKey")
	}
	server, err := dec(serverS)
	if err != nil || len(server) != sha256.Size {
		return bad("invalid ServerKey")
	}
	return SCRAMKeys{Salt: salt, Iterations: iter, StoredKey: stored, ServerKey: server}, nil
}

func hmacSHA256(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)
}

// SCRAMServer runs the server side of one SCRAM-SHA-256 or
// SCRAM-SHA-256-PLUS exchange.
type SCRAMServer struct {
	keys            SCRAMKeys
	cbind           []byte // tls-server-end-point data; nil: no channel binding offered
	gs2             string // the client's gs2 header, "n,," etc.
	plus            bool   // the client chose SCRAM-SHA-256-PLUS
	clientFirstBare string
	serverFirst     string
	nonce           string
}

// NewSCRAMServer starts an exchange that checks proofs against keys.
func NewSCRAMServer(keys SCRAMKeys) *SCRAMServer { return &SCRAMServer{keys: keys} }

// NewSCRAMServerTLS starts an exchange on a TLS connection whose
// tls-server-end-point data (TLSServerEndPoint of the certificate the server
// presented) is cbind: it offers SCRAM-SHA-256-PLUS too, checks the binding
// of a client that chooses it, and refuses a client that says it could bind
// but believes the server cannot (a downgrade).
func NewSCRAMServerTLS(keys SCRAMKeys, cbind []byte) *SCRAMServer {
	return &SCRAMServer{keys: keys, cbind: cbind}
}

// Mechanisms returns the AuthenticationSASL payload to send.
func (s *SCRAMServer) Mechanisms() []byte {
	if s.cbind != nil {
		return SCRAMPlusMechanisms
	}
	return SCRAMMechanisms
}

// ChannelBound reports whether the client chose SCRAM-SHA-256-PLUS (after a
// successful Final, its binding matched).
func (s *SCRAMServer) ChannelBound() bool { return s.plus }

// First handles the SASLInitialResponse body and returns the server-first message.
func (s *SCRAMServer) First(body []byte) ([]byte, error) {
	mech, r, ok := cstring(body)
	if !ok || len(r) < 4 {
		return nil, fmt.Errorf("sasl initial response: %w", ErrMalformed)
	}
	switch {
	case mech == "SCRAM-SHA-256":
	case mech == "SCRAM-SHA-256-PLUS" && s.cbind != nil:
		s.plus = true
	default:
		return nil, fmt.Errorf("sasl mechanism %q is not supported", mech)
	}
	n := int32(binary.BigEndian.Uint32(r))
	r = r[4:]
	if n < 0 || int(n) != len(r) {
		return nil, fmt.Errorf("sasl initial response length: %w", ErrMalformed)
	}
	msg := string(r)
	// gs2 header: a channel binding flag ("n", "y" or "p=<type>"), an
	// optional authzid ("a=..."), each followed by a comma.
	flag, after, ok := strings.Cut(msg, ",")
	if !ok {
		return nil, fmt.Errorf("scram client-first: %w", ErrMalformed)
	}
	authz, rest, ok := strings.Cut(after, ",")
	if !ok || (authz != "" && !strings.HasPrefix(authz, "a=")) {
		return nil, fmt.Errorf("scram client-first: %w", ErrMalformed)
	}
	s.gs2 = msg[:len(flag)+1+len(authz)+1]
	switch {
	case flag == "n":
		if s.plus {
			return nil, fmt.Errorf("client chose SCRAM-SHA-256-PLUS without channel binding data: %w", ErrChannelBinding)
		}
	case flag == "y":
		if s.plus {
			return nil, fmt.Errorf("client chose SCRAM-SHA-256-PLUS without channel binding data: %w", ErrChannelBinding)
		}
		if s.cbind != nil {
			// The client can bind and believes the server cannot: someone
			// in between removed SCRAM-SHA-256-PLUS from the offer.
			return nil, fmt.Errorf("the client supports channel binding but thinks the server does not, while it does: %w", ErrChannelBinding)
		}
	case strings.HasPrefix(flag, "p="):
		if !s.plus {
			return nil, fmt.Errorf("channel binding requested without SCRAM-SHA-256-PLUS: %w", ErrChannelBinding)
		}
		if flag != "p=tls-server-end-point" {
			return nil, fmt.Errorf("channel binding type %q is not supported (only tls-server-end-point): %w", flag[2:], ErrChannelBinding)
		}
	default:
		return nil, fmt.Errorf("scram client-first: %w", ErrMalformed)
	}
	s.clientFirstBare = rest
	var cnonce string
	for _, attr := range strings.Split(rest, ",") {
		if v, ok := strings.CutPrefix(attr, "r="); ok {
			cnonce = v
		}
	}
	if cnonce == "" {
		return nil, fmt.Errorf("scram client-first: no nonce: %w", ErrMalformed)
	}
	snonce := make([]byte, 18)
	if _, err := rand.Read(snonce); err != nil {
		return nil, err
	}
	s.nonce = cnonce + base64.StdEncoding.EncodeToString(snonce)
	s.serverFirst = fmt.Sprintf("r=%s,s=%s,i=%d", s.nonce, base64.StdEncoding.EncodeToString(s.keys.Salt), s.keys.Iterations)
	return []byte(s.serverFirst), nil
}

// Final handles the SASLResponse body (client-final message), verifies the
// proof and returns the server-final message.
func (s *SCRAMServer) Final(body []byte) ([]byte, error) {
	msg := string(body)
	i := strings.LastIndex(msg, ",p=")
	if i < 0 {
		return nil, fmt.Errorf("scram client-final: no proof: %w", ErrMalformed)
	}
	withoutProof := msg[:i]
	proof, err := base64.StdEncoding.DecodeString(msg[i+3:])
	if err != nil || len(proof) != sha256.Size {
		return nil, fmt.Errorf("scram client-final: proof: %w", ErrMalformed)
	}
	var nonce, cb string
	for _, attr := range strings.Split(withoutProof, ",") {
		if v, ok := strings.CutPrefix(attr, "r="); ok {
			nonce = v
		}
		if v, ok := strings.CutPrefix(attr, "c="); ok {
			cb = v
		}
	}
	if nonce != s.nonce {
		return nil, fmt.Errorf("scram client-final: nonce mismatch: %w", ErrAuthFailed)
	}
	want := s.gs2
	if s.plus {
		want += string(s.cbind)
	}
	if cb != base64.StdEncoding.EncodeToString([]byte(want)) {
		return nil, fmt.Errorf("scram client-final: channel binding data does not match: %w", ErrChannelBinding)
	}
	authMsg := []byte(s.clientFirstBare + "," + s.serverFirst + "," + withoutProof)
	sig := hmacSHA256(s.keys.StoredKey, authMsg)
	ck := make([]byte, len(proof))
	for j := range proof {
		ck[j] = proof[j] ^ sig[j]
	}
	got := sha256.Sum256(ck)
	if subtle.ConstantTimeCompare(got[:], s.keys.StoredKey) != 1 {
		return nil, ErrAuthFailed
	}
	ss := hmacSHA256(s.keys.ServerKey, authMsg)
	return []byte("v=" + base64.StdEncoding.EncodeToString(ss)), nil
}

// CheckMD5 verifies an md5 PasswordMessage body against password for user
// and the 4-byte salt that was sent.
func CheckMD5(body []byte, user, password string, salt [4]byte) error {
	got, _, ok := cstring(body)
	if !ok {
		return fmt.Errorf("password message: %w", ErrMalformed)
	}
	return checkMD5(got, MD5Hash(user, password), salt)
}

// MD5Hash is PostgreSQL's stored md5 password form: "md5" followed by
// hex(md5(password + user)).
func MD5Hash(user, password string) string {
	h := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(h[:])
}

// CheckMD5Hash verifies an md5 PasswordMessage body against a stored hash
// in MD5Hash's form (no plaintext needed) and the 4-byte salt that was sent.
func CheckMD5Hash(body []byte, hash string, salt [4]byte) error {
	got, _, ok := cstring(body)
	if !ok {
		return fmt.Errorf("password message: %w", ErrMalformed)
	}
	return checkMD5(got, hash, salt)
}

func checkMD5(got, hash string, salt [4]byte) error {
	inner, ok := strings.CutPrefix(hash, "md5")
	if !ok || len(inner) != 32 {
		return fmt.Errorf("stored md5 hash is not in md5<32 hex digits> form: %w", ErrAuthFailed)
	}
	outer := md5.Sum(append([]byte(inner), salt[:]...))
	want := "md5" + hex.EncodeToString(outer[:])
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return ErrAuthFailed
	}
	return nil
}

// CheckCleartext verifies a cleartext PasswordMessage body.
func CheckCleartext(body []byte, password string) error {
	got, _, ok := cstring(body)
	if !ok {
		return fmt.Errorf("password message: %w", ErrMalformed)
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(password)) != 1 || bytes.IndexByte([]byte(got), 0) >= 0 {
		return ErrAuthFailed
	}
	return nil
}
