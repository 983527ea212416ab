package main

import (
	"context"
	"os"
)

// dispatchSignals hands each signal to the handler a command installed
// (a.onSignal, set by the router), or else ends the command's context.
func (a *app) dispatchSignals(ctx context.Context, sigs <-chan os.Signal, cancel context.CancelFunc) {
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-sigs:
			if h := a.onSignal.Load(); h != nil {
				(*h)(sig)
				continue
			}
			cancel()
		}
	}
}
