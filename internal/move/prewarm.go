package move

import (
	"context"
	"time"
)

// announceTimeout bounds announceTarget.
const announceTimeout = 2 * time.Second

// announceTarget touches the shard's catalog row when the catch-up starts
// and again at the fence step (a row updated to itself still bumps the map
// version and names the shard in the change log), so that every router
// reads it again, with its running move's target (placement.Shard.Target),
// and pre-warms its pool to that node while the mover catches up and
// prepares the fence: the transactions the fence holds then find started,
// primed backends at the release. Nothing waits for the routers; a failure
// is logged and the move goes on (the fence's own map names the target too).
func (m *Mover) announceTarget(ctx context.Context, mv *moveRun) {
	// Bounded: an announcement is worth no wait (a row lock held elsewhere).
	ctx, cancel := context.WithTimeout(ctx, announceTimeout)
	defer cancel()
	if _, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.shards SET state = state WHERE id = $1 AND node = $2 AND state = 'active'`,
		mv.Shard, mv.Source); err != nil {
		m.log.Warn("announce the move's target to the routers", "move", mv.ID, "shard", mv.Shard, "node", mv.Target, "err", err)
	}
}
