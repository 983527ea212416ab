// Package proclife keeps pgtenant's child processes from outliving their
// parent, and tells a live process from a dead one whose pid was reused.
//
// Start ties a child to the calling process with Linux's parent-death
// signal (SysProcAttr.Pdeathsig). The kernel sends that signal when the
// parent *thread* exits, not the process (prctl(2); golang/go#27505), and the
// Go runtime ends a thread when a goroutine locked to it returns. So Start
// forks from a goroutine of its own, locked to its thread until the child has
// exited: no other goroutine can run on that thread, lock it and end it, and
// the child dies exactly when the whole process does (SIGKILL included).
//
// ID names a process across pid reuse (pid, start time, boot), for marker
// files that say which process owns a directory; Named finds the processes
// whose command line names a path under a directory.
package proclife
