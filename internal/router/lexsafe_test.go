package router

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Settings that make the server read statement text otherwise than the
// router does are refused (0A000) in every spelling guard sees; harmless
// values pass.
func TestGuardLexSettings(t *testing.T) {
	for _, tc := range []struct {
		sql     string
		refused bool
	}{
		{"SET standard_conforming_strings = off", true},
		{"SET SESSION standard_conforming_strings TO 'false'", true},
		{"set LOCAL \"standard_conforming_strings\" = 0", true},
		{"SET standard_conforming_strings = on", false},
		{"SET standard_conforming_strings TO DEFAULT", false},
		{"SET client_encoding = 'SJIS'", true},
		{"SET client_encoding TO \"Shift_JIS\"", true},
		{"SET NAMES 'GBK'", true},
		{"SET client_encoding = 'UTF8'", false},
		{"SET NAMES 'latin1'", false},
		{"SET client_encoding TO 'ISO-8859-5'", false},
		{"SET client_encoding TO 'WIN1252'", false},
		{"SET client_encoding TO 'windows-950'", true},
		{"SELECT 1; SET client_encoding = 'uhc'", true},
		{"SELECT set_config('standard_conforming_strings', 'off', false)", true},
		{"SELECT set_config('client_encoding', $1, false)", true},
		{"SELECT set_config('standard_conforming_strings', 'on', false)", false},
		{"DO $$ BEGIN PERFORM set_config('client_encoding', 'BIG5', false); END $$", true},
	} {
		g := guard(tc.sql)
		refused := g != nil && g.err != nil
		if refused != tc.refused {
			t.Errorf("guard(%q): refused %v, want %v", tc.sql, refused, tc.refused)
		}
		if refused && g.err.Code != "0A000" {
			t.Errorf("guard(%q): %s, want 0A000", tc.sql, g.err.Code)
		}
	}
	if e := (&guardFinding{params: []int{1}}).checkParams(bindOf("standard_conforming_strings")); e == nil || e.Code != "0A000" {
		t.Errorf("set_config($1, ...) with $1 = standard_conforming_strings: %v, want 0A000", e)
	}
}

// bindOf is a Bind's part after the portal and statement names: no format
// codes (text) and parameters vals.
func bindOf(vals ...string) []byte {
	b := []byte{0, 0, 0, byte(len(vals))}
	for _, v := range vals {
		n := len(v)
		b = append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		b = append(b, v...)
	}
	return append(b, 0, 0)
}

// A switch the router cannot see (a function calling set_config) is caught
// by the backend's ParameterStatus: the session ends with FATAL 0A000 and
// the backend is closed, so no statement is read otherwise than the router
// checked it, in both pool modes.
func TestLexSettingsParameterStatus(t *testing.T) {
	bg := context.Background()
	c, err := pgx.Connect(bg, nodeDSN(nodeB))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(bg)
	if _, err := c.Exec(bg, `CREATE OR REPLACE FUNCTION public.hostile_scs_off() RETURNS text LANGUAGE sql
AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$`); err != nil {
		t.Fatal(err)
	}
	for _, mode := range poolModes {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			pc := pcConnect(t, s, "t1")
			_, err := pc.Exec(ctx(t), "SELECT public.hostile_scs_off()").ReadAll()
			if pgCode(err) != "0A000" {
				t.Fatalf("a function turning standard_conforming_strings off: %v, want FATAL 0A000", err)
			}
			if _, err := pc.Exec(ctx(t), "SELECT 1").ReadAll(); err == nil {
				t.Fatal("the session went on after FATAL")
			}
			// Another client gets a backend that reads strings as the router does.
			pc2 := pcConnect(t, s, "t1")
			if got := pcValue(t, pc2, "SHOW standard_conforming_strings"); got != "on" {
				t.Fatalf("next client: standard_conforming_strings %s, want on", got)
			}
		})
	}
}
