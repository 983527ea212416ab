//go:build !race

package router

// raceDetector reports whether the tests run with -race (race_on_test.go).
const raceDetector = false
