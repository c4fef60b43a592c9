package triggers

import "sync/atomic"

// Stats counts what a Dispatcher did with the events it pulled.
type Stats struct {
	Filtered     atomic.Int64 // did not pass the filter
	Delivered    atomic.Int64 // acked after a 2xx (and any reply stored)
	Replies      atomic.Int64 // reply events published to the broker
	Retried      atomic.Int64 // attempts that failed and were scheduled again
	DeadLettered atomic.Int64 // delivered to the dead-letter sink
	Terminated   atomic.Int64 // given up for good: the sum of the Drop reasons that end an event
	InFlight     atomic.Int64 // deliveries under way now

	drops [numDrops]atomic.Int64
}

// Drop is why a dispatcher gave up an event, or a reply, without
// delivering it. Every drop is logged with the event's id and source and
// counted by its reason.
type Drop int

const (
	// DropUndecodable: the stored message is not a CloudEvent.
	DropUndecodable Drop = iota
	// DropPanic: the delivery panicked (a bug); the event is terminated
	// and stays in the stream for inspection.
	DropPanic
	// DropNoDeadLetterSink: the delivery failed for good and the Trigger
	// has no dead-letter sink.
	DropNoDeadLetterSink
	// DropReplyTTL: the subscriber's reply was not stored because its
	// knativebrokerttl is used up (an event loop); the event itself was
	// delivered.
	DropReplyTTL
	// DropDeadLetterRefused: the dead-letter sink answered that it will
	// never take the event (a status Knative does not retry, such as 400).
	DropDeadLetterRefused
	numDrops
)

var dropNames = [numDrops]string{"undecodable", "panic", "no_dead_letter_sink", "reply_ttl_exhausted", "dead_letter_refused"}

func (r Drop) String() string { return dropNames[r] }

// terminates reports whether the drop ends the event itself.
func (r Drop) terminates() bool { return r != DropReplyTTL }

func (s *Stats) drop(r Drop) {
	s.drops[r].Add(1)
	if r.terminates() {
		s.Terminated.Add(1)
	}
}

// Drops counts the drops by reason, every reason present.
func (s *Stats) Drops() map[string]int64 {
	m := make(map[string]int64, numDrops)
	for r := range numDrops {
		m[r.String()] = s.drops[r].Load()
	}
	return m
}
