package move

import (
	"context"
	"fmt"
)

// runCopy moves a shard without logical replication. Not implemented yet.
func (m *Mover) runCopy(ctx context.Context, mv *moveRun, res *Result) error {
	return fmt.Errorf("method %q is not implemented yet", MethodCopy)
}
