package placement

import "unicode/utf8"

func validUTF8(s string) bool { return utf8.ValidString(s) }

// Hash returns what PostgreSQL computes as hashtextextended(id, 0) under a
// deterministic collation.
func Hash(id string) int64 {
	panic("TODO: port of PostgreSQL hash_bytes_extended")
}

// ShardOf returns the default shard of tenant id among shards shards (a power
// of two): hashtextextended(id, 0) & (shards - 1), which plain SQL computes too.
func ShardOf(id string, shards int) int {
	return int(uint64(Hash(id)) & uint64(shards-1))
}
