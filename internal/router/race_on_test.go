//go:build race

package router

// raceDetector reports whether the tests run with -race: sync.Pool then
// drops a quarter of what is put back (on purpose, to shake out reuse
// bugs), so memory bounds that rest on pooled buffers do not hold.
const raceDetector = true
