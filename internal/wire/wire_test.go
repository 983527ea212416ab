package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestReadMessage(t *testing.T) {
	var stream []byte
	stream = AppendQuery(stream, "SELECT 1")
	stream = Frame(stream, MsgParse, AppendParse(nil, "s1", "SELECT $1", []byte{0, 1, 0, 0, 0, 23}))
	big := bytes.Repeat([]byte("x"), 100000)
	stream = Frame(stream, MsgCopyData, big)
	stream = append(stream, SyncMsg...)
	r := NewReader(bytes.NewReader(stream), 1024, 1<<20)
	tests := []struct {
		typ byte
		n   int
	}{{MsgQuery, 9}, {MsgParse, 3 + 10 + 6}, {MsgCopyData, 100000}, {MsgSync, 0}}
	for _, tt := range tests {
		typ, body, err := r.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := typ, tt.typ; got != want {
			t.Fatalf("type %q, want %q", got, want)
		}
		if got, want := len(body), tt.n; got != want {
			t.Fatalf("%q body %d bytes, want %d", typ, got, want)
		}
	}
	if _, _, err := r.ReadMessage(); err != io.EOF {
		t.Fatalf("at end: %v, want EOF", err)
	}
}

func TestReadMessageLimits(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"too large", Frame(nil, MsgQuery, bytes.Repeat([]byte("x"), 2000)), &TooLargeError{}},
		{"negative length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}, ErrMalformed},
		{"length below 4", []byte{'Q', 0, 0, 0, 2}, ErrMalformed},
		{"truncated body", []byte{'Q', 0, 0, 0, 10, 'a'}, io.ErrUnexpectedEOF},
		{"truncated header", []byte{'Q', 0, 0}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tt.in), 512, 1000)
			_, _, err := r.ReadMessage()
			var tl *TooLargeError
			if _, ok := tt.want.(*TooLargeError); ok {
				if !errors.As(err, &tl) {
					t.Fatalf("err = %v, want TooLargeError", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseStartup(t *testing.T) {
	body := []byte{0, 3, 0, 0}
	body = append(body, "user\x00app\x00options\x00-c pgtenant.tenant=acme\x00\x00"...)
	st, err := ParseStartup(body)
	if err != nil {
		t.Fatal(err)
	}
	if st.Kind != KindStartup || st.Params["user"] != "app" {
		t.Fatalf("got %+v", st)
	}
	if got := OptionSettings(st.Params["options"])["pgtenant.tenant"]; got != "acme" {
		t.Fatalf("tenant option = %q", got)
	}
	for _, bad := range [][]byte{{0, 3, 0, 0, 'u'}, {0, 2, 0, 0}, {0, 3, 0, 0, 0}, {1, 2}} {
		if _, err := ParseStartup(bad); err == nil {
			t.Errorf("ParseStartup(%q) succeeded", bad)
		}
	}
}

func TestOptionSettings(t *testing.T) {
	tests := []struct{ in, key, want string }{
		{"-c pgtenant.tenant=a", "pgtenant.tenant", "a"},
		{"-cpgtenant.tenant=b", "pgtenant.tenant", "b"},
		{"--pgtenant.tenant=c", "pgtenant.tenant", "c"},
		{`-c pgtenant.tenant=with\ space -c statement_timeout=5s`, "pgtenant.tenant", "with space"},
		{`-c statement-timeout=5s`, "statement_timeout", "5s"},
	}
	for _, tt := range tests {
		if got := OptionSettings(tt.in)[tt.key]; got != tt.want {
			t.Errorf("OptionSettings(%q)[%q] = %q, want %q", tt.in, tt.key, got, tt.want)
		}
	}
}

func TestBindParam(t *testing.T) {
	rest := []byte{0, 0, 0, 2, 0, 0, 0, 3, 'a', 'b', 'c', 0xff, 0xff, 0xff, 0xff, 0, 0}
	v, text, ok := BindParam(rest, 0)
	if !ok || !text || string(v) != "abc" {
		t.Fatalf("param 0 = %q %v %v", v, text, ok)
	}
	v, _, ok = BindParam(rest, 1)
	if !ok || v != nil {
		t.Fatalf("param 1 = %q %v", v, ok)
	}
	if _, _, ok := BindParam(rest, 2); ok {
		t.Fatal("param 2 exists")
	}
}

// FuzzReadMessage feeds arbitrary bytes to the reader and the decoders the
// router uses on client input: none may panic, and every frame returned must
// fit the limit.
func FuzzReadMessage(f *testing.F) {
	f.Add(AppendQuery(nil, "SELECT 1"))
	f.Add(Frame(nil, MsgParse, AppendParse(nil, "s", "SELECT $1", []byte{0, 1, 0, 0, 0, 25})))
	f.Add(Frame(nil, MsgBind, AppendBind(nil, nil, "s", []byte{0, 0, 0, 1, 0, 0, 0, 1, 'x', 0, 0})))
	f.Add(Frame(nil, MsgDescribe, AppendTarget(nil, 'S', "s")))
	f.Add([]byte{'Q', 0, 0, 0, 4})
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff})
	f.Add(append([]byte{0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f}, SyncMsg...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), 64, 4096)
		for i := 0; i < 100; i++ {
			typ, body, err := r.ReadMessage()
			if err != nil {
				return
			}
			if len(body) > 4096 {
				t.Fatalf("body of %d bytes passed a 4096-byte limit", len(body))
			}
			switch typ {
			case MsgQuery:
				ParseQuery(body)
			case MsgParse:
				DecodeParse(body)
			case MsgBind:
				if b, err := DecodeBind(body); err == nil {
					BindParam(b.Rest, 0)
					BindParam(b.Rest, 3)
				}
			case MsgDescribe, MsgClose:
				DecodeTarget(body)
			case MsgErrorResponse:
				ErrorCode(body)
			}
		}
		r = NewReader(bytes.NewReader(data), 64, 4096)
		if b, err := r.ReadStartup(); err == nil {
			if st, err := ParseStartup(b); err == nil {
				OptionSettings(st.Params["options"])
			}
		}
	})
}
