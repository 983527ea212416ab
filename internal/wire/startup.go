package wire

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Startup-phase request codes.
const (
	ProtocolVersion3 = 196608
	sslRequestCode   = 80877103
	gssEncCode       = 80877104
	cancelCode       = 80877102
)

// StartupKind says what a startup-phase packet asks for.
type StartupKind int

// Kinds of startup packets.
const (
	KindStartup StartupKind = iota + 1
	KindSSLRequest
	KindGSSENCRequest
	KindCancel
)

// Startup is a decoded startup-phase packet.
type Startup struct {
	Kind StartupKind
	// Params are the StartupMessage parameters (user, database, options, ...).
	Params map[string]string
	// PID and Secret are a CancelRequest's key.
	PID    uint32
	Secret []byte
	// Minor is the minor protocol version a StartupMessage asks for (3.Minor).
	Minor uint16
}

// ParseStartup decodes a packet returned by Reader.ReadStartup.
func ParseStartup(b []byte) (Startup, error) {
	if len(b) < 4 {
		return Startup{}, fmt.Errorf("startup packet too short: %w", ErrMalformed)
	}
	code := binary.BigEndian.Uint32(b)
	switch code {
	case sslRequestCode:
		return Startup{Kind: KindSSLRequest}, nil
	case gssEncCode:
		return Startup{Kind: KindGSSENCRequest}, nil
	case cancelCode:
		if len(b) < 12 || len(b) > 4+4+256 {
			return Startup{}, fmt.Errorf("cancel request: %w", ErrMalformed)
		}
		return Startup{Kind: KindCancel, PID: binary.BigEndian.Uint32(b[4:]), Secret: append([]byte(nil), b[8:]...)}, nil
	}
	if code>>16 != 3 {
		return Startup{}, fmt.Errorf("unsupported protocol version %d.%d", code>>16, code&0xffff)
	}
	params := make(map[string]string)
	rest := b[4:]
	for {
		k, r, ok := cstring(rest)
		if !ok {
			return Startup{}, fmt.Errorf("startup parameters: %w", ErrMalformed)
		}
		if k == "" {
			break
		}
		v, r2, ok := cstring(r)
		if !ok {
			return Startup{}, fmt.Errorf("startup parameter %q: %w", k, ErrMalformed)
		}
		params[k] = v
		rest = r2
	}
	if params["user"] == "" {
		return Startup{}, fmt.Errorf("startup packet has no user")
	}
	return Startup{Kind: KindStartup, Params: params, Minor: uint16(code)}, nil
}

// OptionSettings extracts "-c name=value" and "--name=value" settings from a
// startup options string (backslash escapes spaces, as libpq does).
func OptionSettings(options string) map[string]string {
	var args []string
	var cur strings.Builder
	esc, have := false, false
	for _, r := range options {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case r == '\\':
			esc, have = true, true
		case r == ' ' || r == '\t' || r == '\n':
			if have || cur.Len() > 0 {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have || cur.Len() > 0 {
		args = append(args, cur.String())
	}
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		var kv string
		switch {
		case a == "-c" && i+1 < len(args):
			i++
			kv = args[i]
		case strings.HasPrefix(a, "-c"):
			kv = a[2:]
		case strings.HasPrefix(a, "--"):
			kv = a[2:]
		default:
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		out[strings.ReplaceAll(strings.ToLower(k), "-", "_")] = v
	}
	return out
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

// cbytes splits a NUL-terminated string off b without copying.
func cbytes(b []byte) ([]byte, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}
