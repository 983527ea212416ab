// Command rubypgsuite runs ruby-pg's own spec suite (the pg gem, i.e.
// libpq: pipeline mode, the async API, PQcancel, COPY, notifications, SSL
// negotiation, single-row mode, describe, encodings) through the pgtenant
// router, in transaction and in session pool mode, and straight against
// the same PostgreSQL server as a baseline; it compares each mode's
// failures with the expected-failure lists kept in e2e/rubypgsuite/testdata
// (one per mode, each entry with its reason).
//
// It needs ruby, rspec and the pg gem (Debian: ruby-pg, ruby-rspec) and a
// copy of ruby-pg's source at the tag of the installed gem (-src: a
// checkout, or a git directory whose tag v<PG::VERSION> is extracted with
// git archive). CI cannot fetch it, so the runner is run by hand:
//
//	git clone --bare https://github.com/ged/ruby-pg /tmp/ruby-pg.git
//	go run ./e2e/rubypgsuite -src /tmp/ruby-pg.git
//	go run ./e2e/rubypgsuite -src /tmp/ruby-pg.git -modes transaction -e 'pipeline'
//
// It starts a one-node local cluster (package devcluster) with TLS on (a
// fresh CA, a server certificate for localhost and a client certificate,
// given to the specs as the helper's own are), registers one tenant per
// pool mode in a shard of its own and starts a router per mode with the
// same certificates. The specs' helper is not changed on disk: rspec loads
// override.rb first, which reopens the helper's PostgresServer so that it
// starts no server and connects to the address the runner gives (the node's
// database "test" for the direct run, the router for the others, PGOPTIONS
// naming the mode's tenant). Each mode runs rspec once, in the same order
// (-seed), with JSON output.
//
// It exits 1 on a failure not on the mode's list, or when rspec ends
// without a report (a crash or -timeout); a listed example that passed is
// printed so that the list can be trimmed, and does not fail the run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

func main() { suiterun.Main("rubypgsuite", run) }

// options are the command's flags.
type options struct {
	src         string
	tag         string
	modes       []string
	expectedDir string
	seed        int
	timeout     time.Duration
	example     string
	workDir     string
	rspec       string
	specs       []string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("rubypgsuite", flag.ContinueOnError)
	var o options
	var modes string
	fs.StringVar(&o.src, "src", "", "ruby-pg's source: a checkout at the installed gem's tag, or a git directory (required)")
	fs.StringVar(&o.tag, "tag", "", "tag extracted from a git -src (default: v + the installed gem's PG::VERSION)")
	fs.StringVar(&modes, "modes", "direct,session,transaction", "modes to run, comma-separated: direct (the node itself), session, transaction")
	fs.StringVar(&o.expectedDir, "expected", "e2e/rubypgsuite/testdata", "directory of expected-<mode>.txt")
	fs.IntVar(&o.seed, "seed", 1, "rspec --seed: the same example order in every mode")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "longest rspec run of one mode")
	fs.StringVar(&o.example, "e", "", "rspec -e: run only examples whose description contains this")
	fs.StringVar(&o.workDir, "work", "", "work in this directory and keep it (default: a temporary directory, removed)")
	fs.StringVar(&o.rspec, "rspec", "rspec", "the rspec command")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.src == "" {
		return errors.New("-src is required: a ruby-pg checkout or git directory")
	}
	var err error
	if o.modes, err = suiterun.Modes(modes, "direct", "session", "transaction"); err != nil {
		return err
	}
	o.specs = fs.Args()
	if len(o.specs) == 0 {
		o.specs = []string{"spec"}
	}

	dir, cleanup, err := suiterun.WorkDir(o.workDir, "rubypgsuite-", false)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintln(out, "work directory:", dir)

	exps, err := suiterun.ReadLists(o.expectedDir, " | ", o.modes)
	if err != nil {
		return err
	}
	src, err := prepareSource(ctx, &o, dir)
	if err != nil {
		return err
	}
	bin, err := suiterun.BuildPgtenant(ctx, dir)
	if err != nil {
		return err
	}
	override := filepath.Join(dir, "override.rb")
	if err := os.WriteFile(override, overrideRB, 0o644); err != nil {
		return err
	}
	cl, err := startCluster(ctx, dir)
	if err != nil {
		return err
	}
	defer cl.Down()

	var problems []string
	for _, mode := range o.modes {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		port := cl.node.Port
		if mode != "direct" {
			r, err := startRouter(ctx, bin, cl, mode)
			if err != nil {
				return err
			}
			port = r.Port()
			defer r.Stop()
		}
		t0 := time.Now()
		res, err := runSpecs(ctx, &o, src, override, filepath.Join(dir, "rspec-"+mode+".json"), filepath.Join(dir, "rspec-"+mode+".log"), cl, mode, port)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", mode, err))
			continue
		}
		problems = append(problems, report(out, mode, res, exps[mode], time.Since(t0))...)
	}
	return suiterun.Finish(out, problems, "ok: every failure is on the expected lists")
}

// prepareSource copies ruby-pg's source into dir/ruby-pg (the specs write
// files next to themselves) and returns that directory.
func prepareSource(ctx context.Context, o *options, dir string) (string, error) {
	dst := filepath.Join(dir, "ruby-pg")
	if _, err := os.Stat(filepath.Join(dst, "spec", "helpers.rb")); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(o.src, "spec", "helpers.rb")); err == nil {
		if err := suiterun.Command(ctx, "", nil, "cp", "-R", o.src+"/.", dst).Run(); err != nil {
			return "", fmt.Errorf("copy ruby-pg: %w", err)
		}
		return dst, nil
	}
	tag := o.tag
	if tag == "" {
		v, err := exec.CommandContext(ctx, "ruby", "-rpg", "-e", "print PG::VERSION").Output()
		if err != nil {
			return "", fmt.Errorf("the installed pg gem's version (ruby -rpg): %w", err)
		}
		tag = "v" + string(v)
	}
	c := exec.CommandContext(ctx, "sh", "-c", `git --git-dir "$1" archive "$2" | tar -x -C "$3"`, "sh", o.src, tag, dst)
	c.Stderr = os.Stderr
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("extract ruby-pg %s from %s: %w", tag, o.src, err)
	}
	return dst, nil
}
