package console

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// BasicAuth wraps h so that only requests with this user and password
// (HTTP basic authentication) reach it; others get 401. Serve it over TLS
// or on a loopback address only: basic auth sends the password in clear.
func BasicAuth(h http.Handler, user, password string) http.Handler {
	wantUser, wantPass := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(password))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		gotUser, gotPass := sha256.Sum256([]byte(u)), sha256.Sum256([]byte(p))
		// Both compared, in constant time, whatever the first says.
		userOK := subtle.ConstantTimeCompare(gotUser[:], wantUser[:])
		passOK := subtle.ConstantTimeCompare(gotPass[:], wantPass[:])
		if !ok || userOK&passOK != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="pgtenant console", charset="UTF-8"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// ErrExposed is returned by CheckListen for an address other hosts can
// reach without both authentication and TLS.
var ErrExposed = errors.New("the console shows node addresses, tenant ids and the operation log")

// CheckListen says whether the console may listen on addr (host:port). A
// loopback address (127.0.0.0/8, ::1, localhost) is always allowed: only
// this machine's users reach it. Any other address, an empty host or a
// wildcard (0.0.0.0, [::]) included, needs both basic authentication and
// TLS, so the password and the pages never cross the network in clear.
func CheckListen(addr string, auth, tls bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if Loopback(host) || (auth && tls) {
		return nil
	}
	return fmt.Errorf("listen on %s: %w; bind to 127.0.0.1, or give --auth-user with --auth-password-file and --tls-cert with --tls-key", addr, ErrExposed)
}

// Loopback reports whether host names only this machine.
func Loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
