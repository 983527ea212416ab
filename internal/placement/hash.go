package placement

import (
	"math/bits"
	"unicode/utf8"
)

func validUTF8(s string) bool { return utf8.ValidString(s) }

// Hash returns what PostgreSQL computes as hashtextextended(id, 0) under a
// deterministic collation: the server's hash_bytes_extended over the id's
// bytes with no seed, its uint64 result read as an int64 (the SQL bigint).
//
// The server hashes the bytes as stored, so the result matches only when the
// database encoding keeps them as they are (UTF8, which pgtenant requires).
func Hash(id string) int64 {
	return int64(hashBytesExtended(id, 0))
}

// ShardOf returns the default shard of tenant id among shards shards (a power
// of two): hashtextextended(id, 0) & (shards - 1), which plain SQL computes too.
func ShardOf(id string, shards int) int {
	return int(uint64(Hash(id)) & uint64(shards-1))
}

// hashBytesExtended is PostgreSQL's hash_bytes_extended (src/common/hashfn.c):
// Bob Jenkins' lookup3 over k, returning the final b and c as one 64-bit value
// (b in the high half). A non-zero seed is mixed in first as if it were an
// extra 12-byte block (high 32 bits into a, low 32 bits into b).
//
// The server reads the key a word at a time when it is aligned and byte by
// byte otherwise; on a little-endian machine both paths assemble the same
// little-endian words, which is what this function does. Big-endian servers
// compute different hashes; pgtenant follows the little-endian ones.
func hashBytesExtended(k string, seed uint64) uint64 {
	// The server keeps the length in a uint32; ids are far shorter.
	a := 0x9e3779b9 + uint32(len(k)) + 3923095
	b, c := a, a

	if seed != 0 {
		a += uint32(seed >> 32)
		b += uint32(seed)
		a, b, c = mix(a, b, c)
	}

	// Whole 12-byte blocks.
	for len(k) >= 12 {
		a += le32(k[0:4])
		b += le32(k[4:8])
		c += le32(k[8:12])
		a, b, c = mix(a, b, c)
		k = k[12:]
	}

	// The last 0–11 bytes, zero-padded into a, b and the upper three bytes of
	// c (lookup3 reserves c's lowest byte for the length, which here is
	// already in the initial state).
	switch len(k) {
	case 11:
		c += uint32(k[10]) << 24
		fallthrough
	case 10:
		c += uint32(k[9]) << 16
		fallthrough
	case 9:
		c += uint32(k[8]) << 8
		fallthrough
	case 8:
		b += uint32(k[7]) << 24
		fallthrough
	case 7:
		b += uint32(k[6]) << 16
		fallthrough
	case 6:
		b += uint32(k[5]) << 8
		fallthrough
	case 5:
		b += uint32(k[4])
		fallthrough
	case 4:
		a += uint32(k[3]) << 24
		fallthrough
	case 3:
		a += uint32(k[2]) << 16
		fallthrough
	case 2:
		a += uint32(k[1]) << 8
		fallthrough
	case 1:
		a += uint32(k[0])
	}

	_, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

// le32 reads a little-endian uint32 from the first four bytes of s.
func le32(s string) uint32 {
	_ = s[3] // one bounds check for the four reads
	return uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
}

// mix is lookup3's reversible mix of three 32-bit words, run after each
// 12-byte block.
func mix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

// final is lookup3's last mixing step, which lets every input bit reach b and
// c. (a is returned only for symmetry with mix.)
func final(a, b, c uint32) (uint32, uint32, uint32) {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return a, b, c
}
