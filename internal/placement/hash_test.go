package placement

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// srv is the Postgres server this test binary compares the hash against.
var srv *pgtest.Server

func TestMain(m *testing.M) {
	pgtest.Main(m, []string{"placement"}, func(s []*pgtest.Server) { srv = s[0] })
}

// Seeds compared besides 0, as the bigint the server takes: one with only
// low bits, one with both halves set, and -1 (all ones).
var testSeeds = [...]int64{42, 0x0123456789abcdef, -1}

// TestHashMatchesServer compares Hash, ShardOf and the seeded hash against
// the server's hashtextextended for every generated id, in one query.
func TestHashMatchesServer(t *testing.T) {
	ids := testIDs()
	if len(ids) < 10000 {
		t.Fatalf("generated %d ids, want at least 10000", len(ids))
	}
	covered := map[int]bool{}
	for _, id := range ids {
		covered[len(id)] = true
	}
	for n := 0; n <= 64; n++ {
		if !covered[n] {
			t.Fatalf("no generated id is %d bytes long", n)
		}
	}
	if !covered[MaxTenantIDBytes] {
		t.Fatalf("no generated id is %d bytes long", MaxTenantIDBytes)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.NewDatabase(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)

	// The server hashes the bytes it stores; a non-UTF8 database would
	// convert them first and the comparison would mean nothing.
	var enc string
	if err := conn.QueryRow(ctx, "SHOW server_encoding").Scan(&enc); err != nil {
		t.Fatalf("server encoding: %v", err)
	}
	if enc != "UTF8" {
		t.Fatalf("server_encoding = %s, want UTF8", enc)
	}

	rows, err := conn.Query(ctx, `
		SELECT ord, octet_length(id),
		       hashtextextended(id, 0),
		       (hashtextextended(id, 0) & 0)::int,
		       (hashtextextended(id, 0) & 1)::int,
		       (hashtextextended(id, 0) & 255)::int,
		       (hashtextextended(id, 0) & 65535)::int,
		       ARRAY(SELECT hashtextextended(id, s) FROM unnest($2::bigint[]) WITH ORDINALITY AS u(s, n) ORDER BY n)
		FROM unnest($1::text[]) WITH ORDINALITY AS t(id, ord)
		ORDER BY ord`, ids, testSeeds[:])
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	shardCounts := [...]int{1, 2, 256, 65536}
	var (
		got      int
		failures int
	)
	for rows.Next() {
		var (
			ord, octets int64
			want        int64
			shards      [len(shardCounts)]int
			seeded      []int64
		)
		if err := rows.Scan(&ord, &octets, &want, &shards[0], &shards[1], &shards[2], &shards[3], &seeded); err != nil {
			t.Fatalf("scan: %v", err)
		}
		got++
		id := ids[ord-1]
		if octets != int64(len(id)) {
			t.Fatalf("id %d %q: server stores %d bytes, want %d", ord, id, octets, len(id))
		}
		failed := false
		fail := func(format string, args ...any) {
			if !failed {
				failed = true
				failures++
			}
			if failures <= 20 {
				t.Errorf("id %q (%d bytes): %s", id, len(id), fmt.Sprintf(format, args...))
			}
		}
		if h := Hash(id); h != want {
			fail("Hash = %d, server hashtextextended(id, 0) = %d", h, want)
		}
		for i, n := range shardCounts {
			if s := ShardOf(id, n); s != shards[i] {
				fail("ShardOf(id, %d) = %d, server = %d", n, s, shards[i])
			}
		}
		for i, seed := range testSeeds {
			if h := int64(hashBytesExtended(id, uint64(seed))); h != seeded[i] {
				fail("hashBytesExtended(id, %d) = %d, server hashtextextended(id, %d) = %d", seed, h, seed, seeded[i])
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("rows: %v", err)
	}
	if got != len(ids) {
		t.Fatalf("server returned %d rows for %d ids", got, len(ids))
	}
	if failures > 0 {
		t.Errorf("%d of %d ids hash differently from the server", failures, len(ids))
	}
}

// testIDs returns a fixed (seeded) set of ids: hand-picked awkward ones,
// every byte length 0..64 in several alphabets so every tail case of the
// 12-byte block loop is hit with ASCII and multi-byte characters, and random
// ids of 1..255 bytes. All are valid UTF-8 without NUL, as text must be.
func testIDs() []string {
	ids := []string{
		"", " ", "  ", "\t", "\t\t", "\n", "\r\n", "0", "00", "1", "-1", "null", "NULL", "''", "'", "\"", `""`,
		";", ";;", "\\", `\\`, `\x00`, "a'b", `a"b`, "a;b", `a\b`, "'; DROP TABLE tenants; --", "$1", "%", "_",
		"acme", "Acme", "ACME", "acme ", " acme", "tenant-1", "tenant_1", "tenant.1", "tenant/1",
		"café", "cafe\u0301", "Ärger", "naïve", "Zürich", "日本語", "中文租户", "한국어", "🙂", "👩‍👩‍👧‍👦", "🏳️‍🌈",
		"\u0301", "e\u0301\u0302\u0303", "שלום", "مرحبا", "\u202eabc", "\u200b", "\ufeff", "\u00a0", "\U0010ffff",
		strings.Repeat("x", 255), strings.Repeat("é", 127), strings.Repeat("🙂", 63), strings.Repeat("日", 85),
	}

	// Alphabets of 1-, 2-, 3- and 4-byte characters, and a mix.
	alphabets := [][]rune{
		[]rune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.'\";\\ \t"),
		[]rune("éèêëàâäçñößøåÆŒ\u0301\u0308שלוםمرحبا"),
		[]rune("日本語中文租户한국어\u200b\u202e\ufeff"),
		[]rune("🙂👩🏳🌈😀🚀\U0010ffff"),
		[]rune("aé日🙂'\\;\u0301"),
	}
	for _, k := range knownHashes {
		ids = append(ids, k.id)
	}
	rng := rand.New(rand.NewPCG(1, 2))

	// exact builds a string of exactly n bytes from alphabet, topping up with
	// ASCII when the next character would not fit.
	exact := func(n int, alphabet []rune) string {
		var b strings.Builder
		for b.Len() < n {
			r := alphabet[rng.IntN(len(alphabet))]
			if b.Len()+utf8.RuneLen(r) > n {
				r = rune('a' + rng.IntN(26))
			}
			b.WriteRune(r)
		}
		return b.String()
	}

	for n := 1; n <= 64; n++ {
		for _, alphabet := range alphabets {
			for i := 0; i < 10; i++ {
				ids = append(ids, exact(n, alphabet))
			}
		}
	}
	for len(ids) < 12000 {
		ids = append(ids, exact(1+rng.IntN(MaxTenantIDBytes), alphabets[rng.IntN(len(alphabets))]))
	}
	return ids
}

// knownHashes pins a few results of hashtextextended(id, 0) so a regression
// shows in the failure message as plain numbers. Every id here is also in
// testIDs, so TestHashMatchesServer checks the table itself against the server.
var knownHashes = []struct {
	id   string
	want int64
}{
	{"", -6939563903564495251},
	{" ", 6600704740418937010},
	{"acme", 7757017307627438190},
	{"null", 6073709567199806668},
	{"''", -5432354494565905546},
	{"tenant-1", -5960342201233910903},
	{"café", 2866814374384725210},
	{"日本語", 2870829529307104068},
	{"🙂", -160011369191771018},
	{"a'b;\\", -4336427431829780901},
	{"abcdefghijkl", -7556637188122330412}, // exactly one 12-byte block, no tail
	{"abcdefghijklm", 8871624171452417744}, // one block and a 1-byte tail
}

func TestHashKnownValues(t *testing.T) {
	for _, tt := range knownHashes {
		t.Run(fmt.Sprintf("%q", tt.id), func(t *testing.T) {
			if got := Hash(tt.id); got != tt.want {
				t.Errorf("Hash(%q) = %d, want %d", tt.id, got, tt.want)
			}
		})
	}
}

func BenchmarkHash(b *testing.B) {
	for _, n := range []int{4, 16, 64, MaxTenantIDBytes} {
		id := strings.Repeat("t", n)
		b.Run(fmt.Sprintf("%dB", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				Hash(id)
			}
		})
	}
}
