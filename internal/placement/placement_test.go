package placement

import (
	"errors"
	"strings"
	"testing"
)

func TestValidShardCount(t *testing.T) {
	tests := []struct {
		n    int
		want bool
	}{
		{-1, false},
		{0, false},
		{1, true},
		{2, true},
		{3, false},
		{4, true},
		{6, false},
		{255, false},
		{256, true},
		{1000, false},
		{1024, true},
		{65535, false},
		{65536, true},
		{65537, false},
		{131072, false},
		{-65536, false},
	}
	for _, tt := range tests {
		if got, want := ValidShardCount(tt.n), tt.want; got != want {
			t.Errorf("ValidShardCount(%d) = %v, want %v", tt.n, got, want)
		}
	}
}

func TestValidateTenantID(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		wantErr bool
	}{
		{"empty", "", true},
		{"one byte", "a", false},
		{"255 bytes", strings.Repeat("x", 255), false},
		{"256 bytes", strings.Repeat("x", 256), true},
		{"255 bytes of two-byte runes and one ASCII", strings.Repeat("é", 127) + "x", false},
		{"256 bytes of two-byte runes", strings.Repeat("é", 128), true},
		{"NUL alone", "\x00", true},
		{"NUL inside", "ac\x00me", true},
		{"NUL at end", "acme\x00", true},
		{"invalid UTF-8 byte", "acme\xff", true},
		{"truncated multi-byte rune", "caf\xc3", true},
		{"lone continuation byte", "\x80", true},
		{"overlong encoding", "\xc0\xaf", true},
		{"UTF-16 surrogate", "\xed\xa0\x80", true},
		{"single quote", "o'brien", false},
		{"double quote", `say "hi"`, false},
		{"semicolon and comment", "x'; DROP TABLE t; --", false},
		{"backslash", `a\b`, false},
		{"space", " ", false},
		{"accents", "Zürich café", false},
		{"combining mark", "cafe\u0301", false},
		{"CJK", "日本語", false},
		{"emoji", "🙂👩‍👩‍👧", false},
		{"RTL", "שלום", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateTenantID(tt.id)
			if got, want := err != nil, tt.wantErr; got != want {
				t.Errorf("ValidateTenantID(%q) = %v, want error: %v", tt.id, err, want)
			}
		})
	}
}

func TestMapLocate(t *testing.T) {
	m := &Map{
		Version: 7,
		Shards: []Shard{
			{ID: 0, Schema: SchemaName(0), Node: "n1", State: StateActive, Epoch: 1},
			{ID: 1, Schema: SchemaName(1), Node: "n2", State: StateFenced, Epoch: 3},
			{ID: 2, Schema: SchemaName(2), Node: "gone", State: StateActive},
		},
		Nodes: map[string]Node{
			"n1": {Name: "n1", DSN: "host=a"},
			"n2": {Name: "n2", DSN: "host=b"},
		},
		Tenants: map[string]int{
			"acme":     0,
			"o'brien":  1,
			"orphan":   2,
			"negative": -1,
			"too-far":  3,
		},
	}
	tests := []struct {
		tenant      string
		wantShard   int
		wantNode    string
		wantErr     bool
		wantUnknown bool
	}{
		{tenant: "acme", wantShard: 0, wantNode: "n1"},
		{tenant: "o'brien", wantShard: 1, wantNode: "n2"},
		{tenant: "nobody", wantErr: true, wantUnknown: true},
		{tenant: "", wantErr: true, wantUnknown: true},
		{tenant: "ACME", wantErr: true, wantUnknown: true},
		{tenant: "orphan", wantErr: true},
		{tenant: "negative", wantErr: true},
		{tenant: "too-far", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.tenant, func(t *testing.T) {
			loc, err := m.Locate(tt.tenant)
			if got, want := err != nil, tt.wantErr; got != want {
				t.Fatalf("Locate(%q) error = %v, want error: %v", tt.tenant, err, want)
			}
			if got, want := errors.Is(err, ErrUnknownTenant), tt.wantUnknown; got != want {
				t.Errorf("errors.Is(Locate(%q) error %v, ErrUnknownTenant) = %v, want %v", tt.tenant, err, got, want)
			}
			if err != nil {
				return
			}
			if got, want := loc.Tenant, tt.tenant; got != want {
				t.Errorf("Tenant = %q, want %q", got, want)
			}
			if got, want := loc.Shard.ID, tt.wantShard; got != want {
				t.Errorf("Shard.ID = %d, want %d", got, want)
			}
			if got, want := loc.Shard, m.Shards[tt.wantShard]; got != want {
				t.Errorf("Shard = %+v, want %+v", got, want)
			}
			if got, want := loc.Node.Name, tt.wantNode; got != want {
				t.Errorf("Node.Name = %q, want %q", got, want)
			}
			if got, want := loc.Node, m.Nodes[tt.wantNode]; got != want {
				t.Errorf("Node = %+v, want %+v", got, want)
			}
		})
	}
}

func TestSchemaName(t *testing.T) {
	tests := []struct {
		id   int
		want string
	}{
		{0, "shard_0000"},
		{7, "shard_0007"},
		{255, "shard_0255"},
		{9999, "shard_9999"},
		{10000, "shard_10000"},
		{65535, "shard_65535"},
	}
	for _, tt := range tests {
		if got := SchemaName(tt.id); got != tt.want {
			t.Errorf("SchemaName(%d) = %q, want %q", tt.id, got, tt.want)
		}
	}
}
