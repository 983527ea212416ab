package wire

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestReaderBudget(t *testing.T) {
	const big = PinnedMax + 1000
	b := NewBudget(big+big/2, 20*time.Millisecond)
	stream := func() []byte {
		s := AppendQuery(nil, strings.Repeat("a", big))
		return AppendQuery(s, "SELECT 1")
	}
	ra := NewReader(bytes.NewReader(stream()), 1024, 1<<20)
	rb := NewReader(bytes.NewReader(stream()), 1024, 1<<20)
	ra.UseBudget(context.Background(), b)
	rb.UseBudget(context.Background(), b)

	_, body, err := ra.ReadMessage()
	if err != nil || len(body) != big+1 {
		t.Fatalf("a: %d bytes, %v", len(body), err)
	}
	if got, want := b.InUse(), int64(big+1); got != want {
		t.Fatalf("in use %d, want %d", got, want)
	}
	// The budget cannot hold b's body too: it is skipped, and the next
	// message is read in step.
	_, _, err = rb.ReadMessage()
	var me *MemoryError
	if !errors.As(err, &me) || me.Size != big+1 || me.Waited == 0 {
		t.Fatalf("b: %v, want a MemoryError after a wait", err)
	}
	typ, body, err := rb.ReadMessage()
	if err != nil || typ != MsgQuery || string(body) != "SELECT 1\x00" {
		t.Fatalf("b after the skip: %q %q %v", typ, body, err)
	}
	// A large body is the caller's: String does not copy it, and it
	// survives the next read.
	q, _ := QueryText(body)
	if s := rb.String(q); s != "SELECT 1" {
		t.Fatalf("String = %q", s)
	}
	_, body, _ = ra.ReadMessage() // releases a's share
	_ = body
	if got := b.InUse(); got != 0 {
		t.Fatalf("in use %d after the next read, want 0", got)
	}
	// A body larger than the whole budget fails at once.
	rc := NewReader(bytes.NewReader(AppendQuery(nil, strings.Repeat("c", 2*big))), 1024, 4<<20)
	rc.UseBudget(context.Background(), b)
	if _, _, err := rc.ReadMessage(); !errors.As(err, &me) || me.Waited != 0 {
		t.Fatalf("c: %v, want a MemoryError without a wait", err)
	}
}

func TestReaderStringOwned(t *testing.T) {
	b := NewBudget(8<<20, time.Second)
	text := strings.Repeat("q", PinnedMax+10)
	r := NewReader(bytes.NewReader(AppendQuery(AppendQuery(nil, text), "x")), 1024, 1<<20)
	r.UseBudget(context.Background(), b)
	_, body, err := r.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	q, _ := QueryText(body)
	if testing.AllocsPerRun(1, func() { _ = r.String(q) }) != 0 {
		t.Fatal("String copied a large body")
	}
	s := r.String(q)
	if _, _, err := r.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	if s != text {
		t.Fatal("a large body's string changed after the next read")
	}
}

func TestKeepWith(t *testing.T) {
	b := NewBudget(4<<20, 50*time.Millisecond)
	body := strings.Repeat("k", 3<<20)
	r := NewReader(bytes.NewReader(AppendQuery(AppendQuery(nil, body), body)), 1024, 8<<20)
	r.UseBudget(context.Background(), b)
	_, msg, err := r.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	type stmt struct{ text string }
	q, _ := QueryText(msg)
	kept := &stmt{text: r.String(q)}
	KeepWith(r, kept)
	// The kept text still counts after the next read: the second body
	// does not fit.
	var me *MemoryError
	if _, _, err := r.ReadMessage(); !errors.As(err, &me) {
		t.Fatalf("second body: %v, want a MemoryError while the first is kept", err)
	}
	if got, want := b.InUse(), int64(3<<20+1); got != want {
		t.Fatalf("in use %d, want %d", got, want)
	}
	if len(kept.text) != 3<<20 {
		t.Fatal("kept text changed")
	}
	kept = nil
	// Once the owner is garbage, its share returns.
	for i := 0; b.InUse() != 0; i++ {
		if i > 200 {
			t.Fatalf("in use %d after the owner is gone", b.InUse())
		}
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
}
