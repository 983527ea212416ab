package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"
)

// jsonCommands are the list and show commands that take --json; the
// shapes they print are documented in docs/cli-json.md.
var jsonCommands = map[string]bool{
	"pgtenant tenant locate":  true,
	"pgtenant tenant list":    true,
	"pgtenant tenant top":     true,
	"pgtenant tenant purge":   true,
	"pgtenant tenant import":  true,
	"pgtenant tenant move":    true,
	"pgtenant shard list":     true,
	"pgtenant shard moves":    true,
	"pgtenant node list":      true,
	"pgtenant node stats":     true,
	"pgtenant migrate status": true,
	"pgtenant ops":            true,
	"pgtenant user list":      true,
	"pgtenant version":        true,
}

// addJSONFlags gives every command of jsonCommands a --json flag.
func (a *app) addJSONFlags(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if jsonCommands[c.CommandPath()] {
			c.Flags().BoolVar(&a.json, "json", false, "print JSON instead of a table (shapes: docs/cli-json.md)")
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// printJSON writes v as indented JSON on stdout.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

// setupLogger builds a.logger from --log-level/--log-format, else the
// config file's log_level/log_format, else text at warn.
func (a *app) setupLogger(cmd *cobra.Command) error {
	lvl, format := a.logLevel, a.logFormat
	if f := cmd.Flag("log-level"); (f == nil || !f.Changed) && a.cfg.LogLevel != "" {
		lvl = a.cfg.LogLevel
	}
	if f := cmd.Flag("log-format"); (f == nil || !f.Changed) && a.cfg.LogFormat != "" {
		format = a.cfg.LogFormat
	}
	level, err := parseLevel(lvl)
	if err != nil {
		return err
	}
	a.level.Set(level)
	opts := &slog.HandlerOptions{Level: &a.level}
	switch format {
	case "text", "":
		a.logger = slog.New(slog.NewTextHandler(a.stderr, opts))
	case "json":
		a.logger = slog.New(slog.NewJSONHandler(a.stderr, opts))
		a.jsonLogs = true
	default:
		return usagef("log format %q: use text or json", format)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(s)); err != nil {
		return 0, usagef("log level %q: use debug, info, warn or error", s)
	}
	return level, nil
}

// humanBytes writes a size the way pg_size_pretty does, in powers of 1024:
// 512 bytes, 8192 bytes, 16 kB, 1.5 MB, 230 GB (one decimal below 10).
func humanBytes(n int64) string {
	if n < 0 {
		return "?"
	}
	if n < 10*1024 {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	units := []string{"kB", "MB", "GB", "TB", "PB"}
	v := float64(n) / 1024
	u := 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[u]
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " " + units[u]
}

// plainID shows a tenant id as it is, quoted only when it would be
// ambiguous in a table: empty, with spaces at either end, or with control
// characters.
func plainID(id string) string {
	if id == "" || strings.TrimSpace(id) != id || strings.IndexFunc(id, unicode.IsControl) >= 0 {
		return strconv.Quote(id)
	}
	return id
}

// durationMS is d in milliseconds with a tenth of a millisecond's precision.
func durationMS(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond*100)) / float64(time.Millisecond)
}

// detailText renders an operation's JSON detail as sorted key=value pairs.
func detailText(detail string) string {
	var m map[string]any
	if err := json.Unmarshal([]byte(detail), &m); err != nil || len(m) == 0 {
		if detail == "{}" {
			return ""
		}
		return detail
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		v := m[k]
		switch x := v.(type) {
		case string:
			if x == "" || strings.ContainsAny(x, " =\t\n\"") {
				v = strconv.Quote(x)
			}
		case float64:
			v = strconv.FormatFloat(x, 'f', -1, 64)
		default:
			b, _ := json.Marshal(x)
			v = string(b)
		}
		parts[i] = fmt.Sprintf("%s=%v", k, v)
	}
	return strings.Join(parts, " ")
}

// plural says how many: plural(1, "rule") is "1 rule", plural(2, "rule")
// "2 rules", plural(0, "policy") "0 policies". Counts the CLI prints go
// through it.
func plural[N ~int | ~int64](n N, one string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	if l := len(one); l > 1 && one[l-1] == 'y' && !strings.ContainsRune("aeiou", rune(one[l-2])) {
		return fmt.Sprintf("%d %sies", n, one[:l-1])
	}
	return fmt.Sprintf("%d %ss", n, one)
}
