package console

import (
	"encoding/json"
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// funcs are the templates' helpers.
var funcs = template.FuncMap{
	"bytes":   humanBytes,
	"ago":     ago,
	"clock":   func(t time.Time) string { return t.Local().Format(time.DateTime) },
	"fenced":  func(state string) bool { return state == placement.StateFenced },
	"seconds": func(s float64) string { return fmt.Sprintf("%.3f s", s) },
	"ms":      func(v float64) string { return fmt.Sprintf("%.1f ms", v) },
	"pct":     func(n, of int) int { return pct(int64(n), int64(of)) },
	"inc":     func(i int) int { return i + 1 },
}

func pct(n, of int64) int {
	if of <= 0 {
		return 0
	}
	return int(min(100, n*100/of))
}

// humanBytes prints a size as `shard list` does; -1 is unknown.
func humanBytes(n int64) string {
	if n < 0 {
		return "?"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// ago prints how long ago t was, coarsely.
func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}
	return t.Local().Format(time.DateOnly)
}

// OpView is one operation-log entry with its detail as "key=value" text.
type OpView struct {
	catalog.Operation
	DetailText string
}

func opViews(ops []catalog.Operation) []OpView {
	out := make([]OpView, len(ops))
	for i, o := range ops {
		out[i] = OpView{Operation: o, DetailText: detailText(o.Detail)}
	}
	return out
}

// detailText prints a JSON object's keys and values in key order.
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
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(" ")
		}
		v, _ := json.Marshal(m[k])
		fmt.Fprintf(&b, "%s=%s", k, strings.Trim(string(v), `"`))
	}
	return b.String()
}
