package importer

import (
	"errors"
	"testing"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// TestRejectKeyAndInsert: a rejected row is found again by its replica
// identity's values (the whole row under REPLICA IDENTITY FULL), and an
// update that gives it a tenant becomes the insert of the whole row, its
// unchanged TOAST values taken from the old row when it carries them.
func TestRejectKeyAndInsert(t *testing.T) {
	rel := &stream.Relation{Table: "buildings", Columns: []stream.Column{{Name: "id", Key: true}, {Name: "tenant_id"}, {Name: "body"}}}
	v := func(s string) stream.Value { return stream.Value{Data: []byte(s)} }
	null, unchanged := stream.Value{Null: true}, stream.Value{Unchanged: true}
	inserted := stream.Tuple{v("7"), null, v("long")}
	if got, want := rejectKey(rel, inserted), `{"id":"7"}`; got != want {
		t.Fatalf("key %s, want %s", got, want)
	}
	// The update that gives it a tenant, key unchanged (no old tuple).
	upd := stream.Change{Kind: stream.Update, Rel: rel, New: stream.Tuple{v("7"), v("acme"), unchanged}}
	if got := rejectKey(rel, upd.Key()); got != `{"id":"7"}` {
		t.Fatalf("update's key %s", got)
	}
	if _, err := asInsert(upd); err == nil {
		t.Fatal("an insert made without the unchanged TOAST value")
	}
	// Under REPLICA IDENTITY FULL the old row carries it.
	full := &stream.Relation{Table: "buildings", Identity: 'f', Columns: []stream.Column{{Name: "id", Key: true}, {Name: "tenant_id", Key: true}, {Name: "body", Key: true}}}
	upd = stream.Change{Kind: stream.Update, Rel: full, Old: inserted, New: stream.Tuple{v("7"), v("acme"), unchanged}}
	if got, want := rejectKey(full, upd.Key()), rejectKey(full, inserted); got != want {
		t.Fatalf("full identity: update's key %s, the insert's %s", got, want)
	}
	ins, err := asInsert(upd)
	if err != nil {
		t.Fatal(err)
	}
	if ins.Kind != stream.Insert || string(ins.New[1].Data) != "acme" || string(ins.New[2].Data) != "long" || ins.New[2].Unchanged {
		t.Fatalf("insert %+v", ins.New)
	}
	if !errors.Is(&RejectsError{}, ErrRejects) || (&RejectsError{}).SQLState() != "55000" {
		t.Fatal("RejectsError: not ErrRejects or not 55000")
	}
}
