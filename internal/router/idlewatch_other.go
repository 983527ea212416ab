//go:build !linux

package router

import "time"

// idleWatch is Linux's (epoll); elsewhere a goroutine per round trip
// watches a session-mode backend while its client is idle
// (watchNotifications).
type idleWatch struct{}

// idleArm is a session's state in the idle watch (none here).
type idleArm struct{}

func (s *Server) idleWatch() *idleWatch { return nil }

func (s *Server) stopIdleWatch() {}

func (ss *session) armIdle() bool { return false }

func (ss *session) disarmIdle(time.Time) bool { return false }

func (ss *session) leaveIdle() {}
