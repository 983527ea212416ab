package router

import (
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// TestCredentialsHook logs in with users known only through
// Config.Credentials, in stored (hashed) form.
func TestCredentialsHook(t *testing.T) {
	const user, password = "hooked", "h00k pässword"
	verifier, err := wire.SCRAMVerifier(password, 4096)
	if err != nil {
		t.Fatal(err)
	}
	md5Hash := wire.MD5Hash(user, password)
	tests := []struct {
		name   string
		method AuthMethod
		cred   Credential
		ok     bool // the right password logs in
	}{
		{"scram verifier", AuthSCRAM, Credential{SCRAM: verifier}, true},
		{"scram with both forms", AuthSCRAM, Credential{SCRAM: verifier, MD5: md5Hash}, true},
		{"md5 hash", AuthMD5, Credential{MD5: md5Hash}, true},
		{"md5 auth with only a scram verifier", AuthMD5, Credential{SCRAM: verifier}, true},
		{"scram auth with only an md5 hash", AuthSCRAM, Credential{MD5: md5Hash}, false},
		{"bad verifier", AuthSCRAM, Credential{SCRAM: "SCRAM-SHA-256$nonsense"}, false},
		{"empty credential", AuthSCRAM, Credential{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			s := startRouter(t, Config{Auth: tt.method, Credentials: func(u string) (Credential, bool) {
				calls.Add(1)
				if u != user {
					return Credential{}, false
				}
				return tt.cred, true
			}}, nil)
			login := func(u, pw string) error {
				addr := strings.Replace(routerURL(s, "t1"), url.UserPassword(testUser, testPassword).String()+"@", url.UserPassword(u, pw).String()+"@", 1)
				c, err := pgx.Connect(ctx(t), addr)
				if err != nil {
					return err
				}
				defer c.Close(ctx(t))
				var sh int
				if err := c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil {
					t.Fatalf("query after login: %v", err)
				}
				return nil
			}
			err := login(user, password)
			if tt.ok && err != nil {
				t.Fatalf("right password refused: %v", err)
			}
			if !tt.ok && pgCode(err) != "28P01" {
				t.Fatalf("login with an unusable credential: %v, want 28P01", err)
			}
			if err := login(user, "wrong"); pgCode(err) != "28P01" {
				t.Fatalf("wrong password: %v, want 28P01", err)
			}
			if err := login("stranger", password); pgCode(err) != "28P01" {
				t.Fatalf("unknown user: %v, want 28P01", err)
			}
			// Users in Config.Users do not reach the hook.
			before := calls.Load()
			if err := login(testUser, testPassword); err != nil {
				t.Fatalf("configured user: %v", err)
			}
			if calls.Load() != before {
				t.Fatal("the hook was consulted for a user in Config.Users")
			}
		})
	}
}
