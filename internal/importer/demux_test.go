package importer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// copyRow encodes one binary COPY row; a nil field is NULL.
func copyRow(fields ...[]byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, int16(len(fields)))
	for _, f := range fields {
		if f == nil {
			binary.Write(&b, binary.BigEndian, int32(-1))
			continue
		}
		binary.Write(&b, binary.BigEndian, int32(len(f)))
		b.Write(f)
	}
	return b.Bytes()
}

// TestDemuxSplitsAtAnyBoundary: a binary COPY stream with a tenant id first
// becomes one stream per shard without it, whatever the sizes of the writes
// it arrives in (pgconn writes whole messages, but nothing relies on it),
// with NULLs and empty values kept, header extensions skipped, small flush
// limits splitting a shard's rows into several complete streams, and rows
// of a dropped shard left out.
func TestDemuxSplitsAtAnyBoundary(t *testing.T) {
	shardOf := map[string]int{"acme": 1, "globex": 2, "initech": 1, "gone": -1}
	var in bytes.Buffer
	in.Write(copySignature)
	binary.Write(&in, binary.BigEndian, int32(0))
	binary.Write(&in, binary.BigEndian, int32(3)) // a header extension
	in.WriteString("ext")
	want := map[int][][]byte{}
	for i := 0; i < 40; i++ {
		tenant := []string{"acme", "globex", "initech", "gone"}[i%4]
		fields := [][]byte{[]byte(fmt.Sprintf("row %d", i)), nil, {}, bytes.Repeat([]byte{byte(i)}, i)}
		in.Write(copyRow(append([][]byte{[]byte(tenant)}, fields...)...))
		if s := shardOf[tenant]; s >= 0 {
			want[s] = append(want[s], copyRow(fields...))
		}
	}
	in.Write([]byte{0xff, 0xff})
	stream := in.Bytes()

	for _, limit := range []int{1, 200, 1 << 20} {
		for chunk := 1; chunk <= len(stream); chunk += max(1, chunk/3) {
			got := map[int][][]byte{}
			d := newDemux(func(tenant []byte) (int, error) {
				s, ok := shardOf[string(tenant)]
				if !ok {
					return 0, fmt.Errorf("unknown tenant %q", tenant)
				}
				return s, nil
			}, func(shard int, data []byte) error {
				if !bytes.HasPrefix(data, binaryHeader) || !bytes.HasSuffix(data, []byte{0xff, 0xff}) {
					return fmt.Errorf("shard %d: a stream without its header or trailer", shard)
				}
				body := data[len(binaryHeader) : len(data)-2]
				for len(body) > 0 {
					n := rowLen(t, body)
					got[shard] = append(got[shard], append([]byte(nil), body[:n]...))
					body = body[n:]
				}
				return nil
			}, limit)
			for off := 0; off < len(stream); off += chunk {
				if _, err := d.Write(stream[off:min(off+chunk, len(stream))]); err != nil {
					t.Fatalf("limit %d chunk %d: %v", limit, chunk, err)
				}
			}
			if err := d.finish(); err != nil {
				t.Fatalf("limit %d chunk %d: %v", limit, chunk, err)
			}
			for s, rows := range want {
				if len(got[s]) != len(rows) {
					t.Fatalf("limit %d chunk %d: shard %d got %d rows, want %d", limit, chunk, s, len(got[s]), len(rows))
				}
				for i := range rows {
					if !bytes.Equal(got[s][i], rows[i]) {
						t.Fatalf("limit %d chunk %d: shard %d row %d differs", limit, chunk, s, i)
					}
				}
			}
			if d.rows[1] != 20 || d.rows[2] != 10 {
				t.Fatalf("row counts %v", d.rows)
			}
		}
	}

	// A NULL tenant id stops the copy; a stream cut before its trailer too.
	var bad bytes.Buffer
	bad.Write(binaryHeader)
	bad.Write(copyRow(nil, []byte("x")))
	d := newDemux(func([]byte) (int, error) { return 0, nil }, func(int, []byte) error { return nil }, 10)
	if _, err := d.Write(bad.Bytes()); !errors.Is(err, errNoTenant) {
		t.Fatalf("NULL tenant: %v", err)
	}
	d = newDemux(func([]byte) (int, error) { return 0, nil }, func(int, []byte) error { return nil }, 10)
	if _, err := d.Write(append(append([]byte(nil), binaryHeader...), copyRow([]byte("a"), []byte("x"))...)); err != nil {
		t.Fatal(err)
	}
	if err := d.finish(); err == nil {
		t.Fatal("a stream without its trailer finished")
	}
}

// rowLen is the length of the binary COPY row at the start of b.
func rowLen(t *testing.T, b []byte) int {
	t.Helper()
	nf := int(int16(binary.BigEndian.Uint16(b)))
	off := 2
	for i := 0; i < nf; i++ {
		l := int(int32(binary.BigEndian.Uint32(b[off:])))
		off += 4
		if l > 0 {
			off += l
		}
	}
	return off
}
