//go:build !linux

package router

import "time"

// parkState is Linux's (park_linux.go); elsewhere an idle client keeps its
// goroutine.
type parkState struct{}

func (ss *session) readIdle() bool { return false }

func (ss *session) readWoken(time.Time) bool { return false }

func (ss *session) park(time.Time) bool { return false }

func (ss *session) unpark() {}

func (ss *session) parked() bool { return false }

func (ss *session) unwatchClient() {}

func (ss *session) unparkIO() {}
