package wire

import (
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// pgVerifier was produced by PostgreSQL 15 for the password "secret pw"
// (SET password_encryption = 'scram-sha-256'; CREATE ROLE … PASSWORD …).
const pgVerifier = "SCRAM-SHA-256$4096:OYhWlMhFSJUcfRQWBw8jPQ==$NIlYi7j2L+KKdt5NuRWMT0DjcvLQhRzKFZTbwiQ7rTc=:Ejsok+9lWH7XPKkbiu/fvkYgeAU93144hO0rpiv/iD8="

// scramLogin runs a client SCRAM-SHA-256 exchange with password against a
// server holding keys and reports the server's verdict.
func scramLogin(t *testing.T, keys SCRAMKeys, password string) error {
	t.Helper()
	return scramLoginCB(t, NewSCRAMServer(keys), "SCRAM-SHA-256", "n,,", nil, password)
}

// scramLoginCB runs a client exchange with srv choosing mech, sending gs2
// as its gs2 header and cbind as its channel binding data.
func scramLoginCB(t *testing.T, srv *SCRAMServer, mech, gs2 string, cbind []byte, password string) error {
	t.Helper()
	clientFirstBare := "n=,r=clientnonce123"
	msg := gs2 + clientFirstBare
	body := append([]byte(mech+"\x00"), binary.BigEndian.AppendUint32(nil, uint32(len(msg)))...)
	body = append(body, msg...)
	first, err := srv.First(body)
	if err != nil {
		return err
	}
	var nonce, salt64 string
	iter := 0
	for _, a := range strings.Split(string(first), ",") {
		switch {
		case strings.HasPrefix(a, "r="):
			nonce = a[2:]
		case strings.HasPrefix(a, "s="):
			salt64 = a[2:]
		case strings.HasPrefix(a, "i="):
			for _, c := range a[2:] {
				iter = iter*10 + int(c-'0')
			}
		}
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil {
		t.Fatalf("server-first salt: %v", err)
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		t.Fatal(err)
	}
	ck := hmacSHA256(salted, []byte("Client Key"))
	sk := sha256.Sum256(ck)
	withoutProof := "c=" + base64.StdEncoding.EncodeToString(append([]byte(gs2), cbind...)) + ",r=" + nonce
	authMsg := clientFirstBare + "," + string(first) + "," + withoutProof
	sig := hmacSHA256(sk[:], []byte(authMsg))
	proof := make([]byte, len(ck))
	for i := range ck {
		proof[i] = ck[i] ^ sig[i]
	}
	final, err := srv.Final([]byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)))
	if err != nil {
		return err
	}
	want := "v=" + base64.StdEncoding.EncodeToString(hmacSHA256(hmacSHA256(salted, []byte("Server Key")), []byte(authMsg)))
	if string(final) != want {
		t.Fatalf("server-final %q, want %q", final, want)
	}
	return nil
}

func TestParseSCRAMVerifier(t *testing.T) {
	k, err := ParseSCRAMVerifier(pgVerifier)
	if err != nil {
		t.Fatal(err)
	}
	if k.Iterations != 4096 || len(k.Salt) != 16 || len(k.StoredKey) != 32 || len(k.ServerKey) != 32 {
		t.Fatalf("keys %+v", k)
	}
	if got := k.Verifier(); got != pgVerifier {
		t.Fatalf("Verifier() = %q, want %q", got, pgVerifier)
	}
	if err := scramLogin(t, k, "secret pw"); err != nil {
		t.Fatalf("right password refused: %v", err)
	}
	if err := scramLogin(t, k, "wrong"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: err = %v, want ErrAuthFailed", err)
	}
}

func TestParseSCRAMVerifierInvalid(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	for _, s := range []string{
		"",
		"md5abc",
		"SCRAM-SHA-256$",
		"SCRAM-SHA-256$4096:c2FsdA==",
		"SCRAM-SHA-256$x:c2FsdA==$" + key + ":" + key,
		"SCRAM-SHA-256$0:c2FsdA==$" + key + ":" + key,
		"SCRAM-SHA-256$4096$" + key + ":" + key,
		"SCRAM-SHA-256$4096:!!$" + key + ":" + key,
		"SCRAM-SHA-256$4096:c2FsdA==$" + key,
		"SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:" + key,
		"SCRAM-SHA-256$4096:c2FsdA==$" + key + ":c2hvcnQ=",
	} {
		if _, err := ParseSCRAMVerifier(s); err == nil {
			t.Errorf("ParseSCRAMVerifier(%q) accepted", s)
		}
	}
}

func TestSCRAMVerifier(t *testing.T) {
	v, err := SCRAMVerifier("pässword", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "SCRAM-SHA-256$4096:") {
		t.Fatalf("verifier %q", v)
	}
	k, err := ParseSCRAMVerifier(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := scramLogin(t, k, "pässword"); err != nil {
		t.Fatalf("right password refused: %v", err)
	}
	if err := scramLogin(t, k, "password"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: err = %v", err)
	}
	v2, _ := SCRAMVerifier("pässword", 1000)
	if !strings.HasPrefix(v2, "SCRAM-SHA-256$1000:") || v2[19:] == v[19:] {
		t.Fatalf("second verifier %q (salt must be fresh)", v2)
	}
}

func TestCheckMD5Hash(t *testing.T) {
	const user, password = "alice", "s3cret"
	hash := MD5Hash(user, password)
	inner := md5.Sum([]byte(password + user))
	if hash != "md5"+hex.EncodeToString(inner[:]) {
		t.Fatalf("MD5Hash = %q", hash)
	}
	salt := [4]byte{1, 2, 3, 4}
	answer := func(pw string) []byte {
		in := md5.Sum([]byte(pw + user))
		out := md5.Sum(append([]byte(hex.EncodeToString(in[:])), salt[:]...))
		return []byte("md5" + hex.EncodeToString(out[:]) + "\x00")
	}
	tests := []struct {
		name string
		body []byte
		hash string
		ok   bool
	}{
		{"right", answer(password), hash, true},
		{"wrong password", answer("nope"), hash, false},
		{"hash without prefix", answer(password), hash[3:], false},
		{"short hash", answer(password), "md5abc", false},
		{"no terminator", answer(password)[:35], hash, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckMD5Hash(tt.body, tt.hash, salt)
			if (err == nil) != tt.ok {
				t.Fatalf("CheckMD5Hash: %v, want ok=%v", err, tt.ok)
			}
			if tt.ok {
				if err := CheckMD5(tt.body, user, password, salt); err != nil {
					t.Fatalf("CheckMD5: %v", err)
				}
			}
		})
	}
}

func TestSCRAMChannelBinding(t *testing.T) {
	keys, err := ParseSCRAMVerifier(pgVerifier)
	if err != nil {
		t.Fatal(err)
	}
	cb := sha256.Sum256([]byte("the server certificate"))
	other := sha256.Sum256([]byte("another certificate"))
	tests := []struct {
		name      string
		cbind     []byte // the server's; nil: no TLS
		mech, gs2 string
		client    []byte
		err       error // nil: accepted
		bound     bool
	}{
		{"plus over TLS", cb[:], "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", cb[:], nil, true},
		{"plus with an authzid", cb[:], "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,a=app,", cb[:], nil, true},
		{"plus, another certificate (a man in the middle)", cb[:], "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", other[:], ErrChannelBinding, false},
		{"plus, unsupported type", cb[:], "SCRAM-SHA-256-PLUS", "p=tls-unique,,", cb[:], ErrChannelBinding, false},
		{"plus without binding", cb[:], "SCRAM-SHA-256-PLUS", "n,,", nil, ErrChannelBinding, false},
		{"binding without plus", cb[:], "SCRAM-SHA-256", "p=tls-server-end-point,,", cb[:], ErrChannelBinding, false},
		{"downgrade: y over TLS with plus offered", cb[:], "SCRAM-SHA-256", "y,,", nil, ErrChannelBinding, false},
		{"client without binding over TLS", cb[:], "SCRAM-SHA-256", "n,,", nil, nil, false},
		{"y without TLS", nil, "SCRAM-SHA-256", "y,,", nil, nil, false},
		{"plus without TLS", nil, "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", cb[:], errors.New("not supported"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := NewSCRAMServer(keys)
			if tt.cbind != nil {
				srv = NewSCRAMServerTLS(keys, tt.cbind)
				if string(srv.Mechanisms()) != string(SCRAMPlusMechanisms) {
					t.Fatalf("mechanisms %q", srv.Mechanisms())
				}
			}
			err := scramLoginCB(t, srv, tt.mech, tt.gs2, tt.client, "secret pw")
			switch {
			case tt.err == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.err == ErrChannelBinding && !errors.Is(err, ErrChannelBinding):
				t.Fatalf("err = %v, want ErrChannelBinding", err)
			case tt.err != nil && err == nil:
				t.Fatal("accepted")
			}
			if err == nil && srv.ChannelBound() != tt.bound {
				t.Fatalf("ChannelBound = %v, want %v", srv.ChannelBound(), tt.bound)
			}
		})
	}
	// A wrong password over a bound channel is still a wrong password.
	if err := scramLoginCB(t, NewSCRAMServerTLS(keys, cb[:]), "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", cb[:], "wrong"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: %v", err)
	}
}
