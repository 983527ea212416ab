package importer

import "time"

// The steps of a shard's cutover that a trace function (SetTrace) is told
// of, in the order they usually come. The marker's steps in the stream
// (StepMarkerDecoded, StepMarkerApplied) come for every marker of the
// shard, those written before the fence (the catch-up check) too.
const (
	StepFence           = "fence"            // the cutover starts the fence
	StepFenceCommitted  = "fence committed"  // the catalog committed the fence
	StepRoutersHold     = "routers hold"     // every router acknowledged it
	StepMarkerCommitted = "marker committed" // the legacy database committed the marker
	StepMarkerDecoded   = "marker decoded"   // the applier has the marker from the stream
	StepMarkerApplied   = "marker applied"   // the marker's round committed on the node
	StepNodeFlushed     = "node flushed"     // the trigger method: the cutover's flush beside the marker's trip returned
	StepMarkerNotified  = "marker notified"  // the cutover saw the marker on the node
	StepNodeReflushed   = "node reflushed"   // the cutover flushed the node after that (not known durable past the shard's changes)
	StepFlipped         = "flipped"          // the catalog committed the flip
	StepReleased        = "released"         // every router acknowledged the flip
)

// SetTrace sets a function told when each step of a cutover (the Step
// constants) happened, for timelines (bench/cmd/importbench -timeline);
// nil, the default, tells nothing. It is called from the cutovers'
// goroutines and the change stream's at once, so it must be safe for
// concurrent use, and quick. Set it before Follow and Cutover run.
func (im *Importer) SetTrace(f func(shard int, step string, at time.Time)) { im.trace = f }

// traceStep tells the trace function of step, if one is set.
func (im *Importer) traceStep(shard int, step string, at time.Time) {
	if im.trace != nil {
		im.trace(shard, step, at)
	}
}
