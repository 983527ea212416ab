package stream

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a position in the source's write-ahead log.
type LSN = pglogrepl.LSN

// ParseLSN parses the text form of an LSN ("16/B374D848").
func ParseLSN(s string) (LSN, error) { return pglogrepl.ParseLSN(s) }

// Column is one column of a published relation.
type Column struct {
	Name    string
	TypeOID uint32
	TypeMod int32
	// Key is set for the columns of the replica identity (all columns under REPLICA IDENTITY FULL).
	Key bool
}

// Relation is a published table as the source described it.
type Relation struct {
	// ID is the source's oid of the table; it identifies the relation in changes.
	ID     uint32
	Schema string
	Table  string
	// Identity is the table's REPLICA IDENTITY: 'd' default (primary key), 'i' index, 'f' full, 'n' nothing.
	Identity byte
	Columns  []Column
}

// KeyColumns returns the indexes of the replica identity's columns.
func (r *Relation) KeyColumns() []int {
	var idx []int
	for i, c := range r.Columns {
		if c.Key {
			idx = append(idx, i)
		}
	}
	return idx
}

// Value is one column value of a tuple in text format.
type Value struct {
	// Data is the value's text representation (owned by the Value).
	Data []byte
	// Null is set for SQL NULL.
	Null bool
	// Unchanged is set for a TOASTed value that an update left unchanged (it is not sent).
	Unchanged bool
}

// Tuple is a row: one Value per column of its Relation, in the same order.
type Tuple []Value

// Kind is what a Change does.
type Kind int

// The kinds of Change.
const (
	Insert Kind = iota + 1
	Update
	Delete
	Truncate
)

func (k Kind) String() string {
	switch k {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Change is one row change (or one TRUNCATE) of a source transaction.
type Change struct {
	Kind Kind
	// Rel is the changed table (nil for Truncate: see Truncated).
	Rel *Relation
	// Old is the row's replica identity before the change for Update and
	// Delete: the key columns set, other columns Null, or the whole old row
	// under REPLICA IDENTITY FULL. For an Update that did not change the key
	// it is nil: the key is in New.
	Old Tuple
	// New is the row after an Insert or Update.
	New Tuple
	// Truncated lists the tables of a Truncate.
	Truncated []*Relation
	// Cascade and RestartIdentity are the options of a Truncate.
	Cascade, RestartIdentity bool
}

// Key returns the tuple that identifies the changed row: Old when sent, else New.
func (c *Change) Key() Tuple {
	if c.Old != nil {
		return c.Old
	}
	return c.New
}

// Txn is one committed source transaction.
type Txn struct {
	XID uint32
	// CommitLSN is the position of the commit record; EndLSN the position just after it.
	// Positions recorded by appliers are EndLSNs.
	CommitLSN, EndLSN LSN
	CommitTime        time.Time
	Changes           []Change
}

// Decoder decodes pgoutput (protocol version 1) messages. It remembers the
// relations the stream described and assembles transactions. The zero
// value is not ready: use NewDecoder.
type Decoder struct {
	rels map[uint32]*Relation
	cur  *Txn
}

// NewDecoder returns a Decoder with no relations known.
func NewDecoder() *Decoder { return &Decoder{rels: make(map[uint32]*Relation)} }

// Relation returns the relation with the source oid id, if the stream described it.
func (d *Decoder) Relation(id uint32) (*Relation, bool) {
	r, ok := d.rels[id]
	return r, ok
}

// Decode decodes one pgoutput message (the WAL data of an XLogData). It
// returns the transaction when the message is its commit, nil otherwise.
// The message buffer may be reused afterwards: values are copied.
func (d *Decoder) Decode(data []byte) (*Txn, error) {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("decode pgoutput message: %w", err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		rel := &Relation{ID: m.RelationID, Schema: m.Namespace, Table: m.RelationName, Identity: m.ReplicaIdentity}
		for _, c := range m.Columns {
			rel.Columns = append(rel.Columns, Column{Name: c.Name, TypeOID: c.DataType, TypeMod: c.TypeModifier, Key: c.Flags&1 != 0})
		}
		d.rels[rel.ID] = rel
	case *pglogrepl.BeginMessage:
		if d.cur != nil {
			return nil, fmt.Errorf("decode pgoutput: begin of transaction %d inside transaction %d", m.Xid, d.cur.XID)
		}
		d.cur = &Txn{XID: m.Xid, CommitLSN: m.FinalLSN, CommitTime: m.CommitTime}
	case *pglogrepl.CommitMessage:
		if d.cur == nil {
			return nil, fmt.Errorf("decode pgoutput: commit at %s without a begin", m.CommitLSN)
		}
		t := d.cur
		d.cur = nil
		t.CommitLSN, t.EndLSN, t.CommitTime = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
		return t, nil
	case *pglogrepl.InsertMessage:
		return nil, d.add(m.RelationID, func(rel *Relation) (Change, error) {
			n, err := tuple(rel, m.Tuple)
			return Change{Kind: Insert, Rel: rel, New: n}, err
		})
	case *pglogrepl.UpdateMessage:
		return nil, d.add(m.RelationID, func(rel *Relation) (Change, error) {
			c := Change{Kind: Update, Rel: rel}
			var err error
			if m.OldTuple != nil {
				if c.Old, err = tuple(rel, m.OldTuple); err != nil {
					return c, err
				}
			}
			c.New, err = tuple(rel, m.NewTuple)
			return c, err
		})
	case *pglogrepl.DeleteMessage:
		return nil, d.add(m.RelationID, func(rel *Relation) (Change, error) {
			o, err := tuple(rel, m.OldTuple)
			return Change{Kind: Delete, Rel: rel, Old: o}, err
		})
	case *pglogrepl.TruncateMessage:
		if d.cur == nil {
			return nil, fmt.Errorf("decode pgoutput: truncate outside a transaction")
		}
		c := Change{Kind: Truncate, Cascade: m.Option&pglogrepl.TruncateOptionCascade != 0,
			RestartIdentity: m.Option&pglogrepl.TruncateOptionRestartIdentity != 0}
		for _, id := range m.RelationIDs {
			rel, ok := d.rels[id]
			if !ok {
				return nil, fmt.Errorf("decode pgoutput: truncate of unknown relation %d", id)
			}
			c.Truncated = append(c.Truncated, rel)
		}
		d.cur.Changes = append(d.cur.Changes, c)
	default:
		// Origin, Type and logical decoding messages carry nothing to apply.
	}
	return nil, nil
}

func (d *Decoder) add(relID uint32, mk func(*Relation) (Change, error)) error {
	if d.cur == nil {
		return fmt.Errorf("decode pgoutput: row change outside a transaction")
	}
	rel, ok := d.rels[relID]
	if !ok {
		return fmt.Errorf("decode pgoutput: change of unknown relation %d", relID)
	}
	c, err := mk(rel)
	if err != nil {
		return err
	}
	d.cur.Changes = append(d.cur.Changes, c)
	return nil
}

func tuple(rel *Relation, td *pglogrepl.TupleData) (Tuple, error) {
	if td == nil {
		return nil, fmt.Errorf("decode pgoutput: missing tuple for %s.%s", rel.Schema, rel.Table)
	}
	if len(td.Columns) != len(rel.Columns) {
		return nil, fmt.Errorf("decode pgoutput: %s.%s has %d columns, tuple has %d", rel.Schema, rel.Table, len(rel.Columns), len(td.Columns))
	}
	t := make(Tuple, len(td.Columns))
	for i, c := range td.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			t[i].Null = true
		case pglogrepl.TupleDataTypeToast:
			t[i].Unchanged = true
		case pglogrepl.TupleDataTypeText:
			t[i].Data = append([]byte(nil), c.Data...)
		default:
			return nil, fmt.Errorf("decode pgoutput: column %s of %s.%s in format %q (only text is requested)", rel.Columns[i].Name, rel.Schema, rel.Table, c.DataType)
		}
	}
	return t, nil
}
