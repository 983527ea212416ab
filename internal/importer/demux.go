package importer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// copySignature starts every binary COPY stream (11 bytes), followed by a
// flags word and the length of a header extension.
var copySignature = []byte("PGCOPY\n\xff\r\n\x00")

// binaryHeader is the header of the binary COPY streams the demultiplexer
// writes: the signature, no flags, no extension.
var binaryHeader = append(append([]byte(nil), copySignature...), 0, 0, 0, 0, 0, 0, 0, 0)

// errNoTenant: a row of the legacy table has no tenant (NULL tenant id, or
// a child row without its parent).
var errNoTenant = errors.New("a row has no tenant")

// demux splits one binary COPY stream (`COPY (SELECT tenant::text, cols…)
// TO STDOUT (FORMAT binary)`) into one binary COPY stream per shard: each
// row goes, without its first field (the tenant id), to the buffer of its
// tenant's shard; a buffer past limit bytes is handed to flush. It is an
// io.Writer fed by pgconn's CopyTo, which writes whole CopyData messages
// (one row each), but any split of the stream is parsed.
type demux struct {
	// shardOf returns the shard of a tenant id, or -1 to drop the row (its
	// shard's table is complete on its node already); an error stops the copy.
	shardOf func(tenant []byte) (int, error)
	// flush writes one complete binary COPY stream (header, rows, trailer)
	// into a shard's table.
	flush func(shard int, data []byte) error
	limit int
	// atEnd holds every shard's rows until finish (one COPY per shard and
	// unit: a table that references itself is checked per statement).
	atEnd bool

	pending []byte
	header  bool
	ended   bool
	bufs    map[int]*bytes.Buffer
	rows    map[int]int64
	bytes   map[int]int64
}

func newDemux(shardOf func([]byte) (int, error), flush func(int, []byte) error, limit int) *demux {
	return &demux{shardOf: shardOf, flush: flush, limit: limit, bufs: map[int]*bytes.Buffer{}, rows: map[int]int64{}, bytes: map[int]int64{}}
}

// Write parses complete rows of p (with what an earlier call left) and
// routes them; a partial row waits for the next call.
func (d *demux) Write(p []byte) (int, error) {
	data := p
	if len(d.pending) > 0 {
		d.pending = append(d.pending, p...)
		data = d.pending
	}
	n, err := d.parse(data)
	if err != nil {
		return 0, err
	}
	rest := data[n:]
	if len(rest) == 0 {
		d.pending = d.pending[:0]
	} else if len(d.pending) > 0 {
		d.pending = append(d.pending[:0], rest...)
	} else {
		d.pending = append([]byte(nil), rest...)
	}
	return len(p), nil
}

// parse routes every complete row at the start of data and returns how
// many bytes it used.
func (d *demux) parse(data []byte) (int, error) {
	off := 0
	if !d.header {
		if len(data) < len(copySignature)+8 {
			return 0, nil
		}
		if !bytes.Equal(data[:len(copySignature)], copySignature) {
			return 0, errors.New("the legacy database sent no binary COPY header")
		}
		ext := int(binary.BigEndian.Uint32(data[len(copySignature)+4:]))
		if len(data) < len(copySignature)+8+ext {
			return 0, nil
		}
		off = len(copySignature) + 8 + ext
		d.header = true
	}
	for off+2 <= len(data) && !d.ended {
		nf := int16(binary.BigEndian.Uint16(data[off:]))
		if nf == -1 {
			d.ended = true
			off += 2
			break
		}
		if nf < 1 {
			return 0, fmt.Errorf("binary COPY row with %d fields", nf)
		}
		// The tenant field.
		p := off + 2
		if p+4 > len(data) {
			break
		}
		tl := int(int32(binary.BigEndian.Uint32(data[p:])))
		if tl < 0 {
			return 0, errNoTenant
		}
		if p+4+tl > len(data) {
			break
		}
		tenant := data[p+4 : p+4+tl]
		rest := p + 4 + tl
		// The row's other fields.
		q, complete := rest, true
		for i := 1; i < int(nf); i++ {
			if q+4 > len(data) {
				complete = false
				break
			}
			l := int(int32(binary.BigEndian.Uint32(data[q:])))
			q += 4
			if l > 0 {
				q += l
			}
			if q > len(data) {
				complete = false
				break
			}
		}
		if !complete {
			break
		}
		shard, err := d.shardOf(tenant)
		if err != nil {
			return 0, err
		}
		if shard >= 0 {
			b := d.bufs[shard]
			if b == nil {
				// Sized once for a batch (its last row goes past limit).
				b = bytes.NewBuffer(make([]byte, 0, d.limit+d.limit/8))
				d.bufs[shard] = b
			}
			if b.Len() == 0 {
				b.Write(binaryHeader)
			}
			var cnt [2]byte
			binary.BigEndian.PutUint16(cnt[:], uint16(nf-1))
			b.Write(cnt[:])
			b.Write(data[rest:q])
			d.rows[shard]++
			d.bytes[shard] += int64(q - rest + 2)
			if !d.atEnd && b.Len() >= d.limit {
				if err := d.flushShard(shard); err != nil {
					return 0, err
				}
			}
		}
		off = q
	}
	return off, nil
}

func (d *demux) flushShard(shard int) error {
	b := d.bufs[shard]
	if b == nil || b.Len() == 0 {
		return nil
	}
	b.Write([]byte{0xff, 0xff})
	err := d.flush(shard, b.Bytes())
	b.Reset()
	return err
}

// finish flushes every shard's rows; the stream must have ended.
func (d *demux) finish() error {
	if !d.ended {
		return errors.New("the legacy database's COPY stream ended before its trailer")
	}
	for shard := range d.bufs {
		if err := d.flushShard(shard); err != nil {
			return err
		}
	}
	return nil
}
