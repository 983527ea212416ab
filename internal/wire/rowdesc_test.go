package wire

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestTextRowDescriptionFormat checks that the one-column RowDescription the
// router answers for itself says the format the client's Bind asked for: a
// driver that asked for binary results reads the format code to decode.
func TestTextRowDescriptionFormat(t *testing.T) {
	for _, format := range []int16{0, 1} {
		msg := AppendTextRowDescriptionFormat(nil, "set_config", format)
		var rd pgproto3.RowDescription
		if err := rd.Decode(msg[5:]); err != nil {
			t.Fatalf("format %d: decode: %v", format, err)
		}
		if len(rd.Fields) != 1 {
			t.Fatalf("format %d: %d fields, want 1", format, len(rd.Fields))
		}
		f := rd.Fields[0]
		if string(f.Name) != "set_config" || f.DataTypeOID != 25 || f.Format != format {
			t.Errorf("format %d: got name %q oid %d format %d", format, f.Name, f.DataTypeOID, f.Format)
		}
	}
}
