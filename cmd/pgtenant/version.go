package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// versionInfo is what `pgtenant version` prints, from the build info Go
// embeds in the binary.
type versionInfo struct {
	Version  string `json:"version"` // module version, "(devel)" for a local build
	Go       string `json:"go"`
	Revision string `json:"vcs_revision,omitempty"`
	Time     string `json:"vcs_time,omitempty"`
	Modified bool   `json:"vcs_modified"`
	Platform string `json:"platform"`
}

func buildVersion() versionInfo {
	v := versionInfo{Version: "unknown", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Version = bi.Main.Version
	if v.Version == "" {
		v.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print pgtenant's version, commit and Go version",
		Example: `  pgtenant version
  pgtenant version --json | jq -r .vcs_revision`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v := buildVersion()
			if a.json {
				return a.printJSON(v)
			}
			fmt.Fprintf(a.stdout, "pgtenant %s", v.Version)
			if v.Revision != "" {
				short := v.Revision
				if len(short) > 12 {
					short = short[:12]
				}
				fmt.Fprintf(a.stdout, " (commit %s", short)
				if v.Time != "" {
					fmt.Fprintf(a.stdout, ", %s", v.Time)
				}
				if v.Modified {
					fmt.Fprint(a.stdout, ", modified")
				}
				fmt.Fprint(a.stdout, ")")
			}
			fmt.Fprintf(a.stdout, " %s %s\n", v.Go, v.Platform)
			return nil
		},
	}
}
