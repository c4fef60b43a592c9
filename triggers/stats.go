package triggers

import "sync/atomic"

// Stats counts what a Dispatcher did with the events it pulled.
type Stats struct {
	Filtered     atomic.Int64 // did not pass the filter
	Delivered    atomic.Int64 // acked after a 2xx (and any reply stored)
	Replies      atomic.Int64 // reply events published to the broker
	Retried      atomic.Int64 // attempts that failed and were scheduled again
	DeadLettered atomic.Int64 // delivered to the dead-letter sink
	Terminated   atomic.Int64 // failed for good without a dead-letter sink
	InFlight     atomic.Int64 // deliveries under way now
}
