package move

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestNodeRoleResumeAfterCrash: with nodes registered as a role that is not
// a superuser, a logical move killed at the copy (its exported snapshot
// dies with it), during the catch-up, or under the fence resumes with every
// row once; a copy move killed after the target got its indexes, FK and
// trigger resumes without session_replication_role (which needs a superuser).
func TestNodeRoleResumeAfterCrash(t *testing.T) {
	for _, step := range []Step{StepCopy, StepCatchUp, StepFence} {
		t.Run(string(step), func(t *testing.T) {
			e := newEnvNodeRole(t)
			fillShard(t, e, 2000)
			id := crashedMove(t, e, step)
			mustExec(t, e.owner, `INSERT INTO shard_0005.items (account_id, writer, n) SELECT 1, 9, i FROM generate_series(1, 100) i`)
			m := testMover(t, e, Config{})
			if _, err := m.Resume(context.Background(), id); err != nil {
				t.Fatalf("resume: %v", err)
			}
			if got, want := shardState(t, e), (shardRow{"n2", "active", 1}); got != want {
				t.Errorf("catalog shard: %+v, want %+v", got, want)
			}
			if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); n != 2100 {
				t.Errorf("target has %d items, want 2100", n)
			}
			// The trigger disabled while streaming is enabled again.
			if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_trigger WHERE tgname = 'items_fill' AND tgenabled = 'O'`); n != 1 {
				t.Errorf("trigger items_fill enabled on the target: %d, want 1", n)
			}
			assertNoLeftovers(t, e)
		})
	}
	t.Run("copy with post-copy objects", func(t *testing.T) {
		e := newEnvNodeRole(t)
		fillShard(t, e, 2000)
		ctx := context.Background()
		_, err := testMover(t, e, Config{BeforeStep: crashAt(e, StepCopyData)}).Move(ctx, testShard, "n2", Options{Method: MethodCopy})
		if !errors.Is(err, errCrash) {
			t.Fatalf("move: got %v, want the simulated crash", err)
		}
		// What a copy killed after building the post-copy objects leaves: rows, an index, the FK and the trigger.
		mustExec(t, e.dst, `SET ROLE `+nodeRole+`;
			INSERT INTO shard_0005.accounts (id, tenant) VALUES (1, 'partial');
			INSERT INTO shard_0005.items (account_id, n) VALUES (1, 1);
			CREATE INDEX items_account ON shard_0005.items (account_id);
			ALTER TABLE shard_0005.items ADD FOREIGN KEY (account_id) REFERENCES shard_0005.accounts (id);
			CREATE TRIGGER items_fill BEFORE INSERT ON shard_0005.items FOR EACH ROW EXECUTE FUNCTION shard_0005.fill_payload();
			RESET ROLE`)
		m := testMover(t, e, Config{})
		list, err := m.List(ctx)
		if err != nil || len(list) != 1 {
			t.Fatalf("moves: %v %v", list, err)
		}
		if _, err := m.Resume(ctx, list[0].ID); err != nil {
			t.Fatalf("resume: %v", err)
		}
		if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); n != 2000 {
			t.Errorf("target has %d items, want 2000", n)
		}
		if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items WHERE payload = 'p' || n`); n != 2000 {
			t.Errorf("%d items keep the source's payload, want 2000", n)
		}
		if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'shard_0005'::regnamespace`); n != 1 {
			t.Errorf("%d foreign keys on the target, want 1", n)
		}
		if got, want := shardState(t, e), (shardRow{"n2", "active", 1}); got != want {
			t.Errorf("catalog shard: %+v, want %+v", got, want)
		}
		assertNoLeftovers(t, e)
	})
}

// TestNodeRolePrecheck: a table of the shard that the node role does not own
// (it could not publish it) stops the move before it starts, naming the
// table and the ALTER TABLE that fixes it.
func TestNodeRolePrecheck(t *testing.T) {
	e := newEnvNodeRole(t)
	fillShard(t, e, 10)
	mustExec(t, e.src, `CREATE TABLE shard_0005.not_mine (id int PRIMARY KEY)`) // owned by the superuser
	m := testMover(t, e, Config{})
	_, err := m.Move(context.Background(), testShard, "n2", Options{})
	if err == nil || !strings.Contains(err.Error(), "shard_0005.not_mine") || !strings.Contains(err.Error(), `OWNER TO "pgtenant_node"`) {
		t.Fatalf("move: %v; want a pre-check error naming shard_0005.not_mine and the ALTER TABLE", err)
	}
	if list, err := m.List(context.Background()); err != nil || len(list) != 0 {
		t.Errorf("moves after a failed pre-check: %+v %v", list, err)
	}
}
