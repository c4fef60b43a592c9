package triggers

import (
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the counters of Dispatchers to Prometheus, read at
// scrape time from each Dispatcher's Stats.
type Collector struct {
	mu    sync.Mutex
	disps []*Dispatcher
}

var (
	eventsDesc = prometheus.NewDesc("koffeeshop_trigger_events_total",
		"Events a Trigger's dispatcher finished with, by result: delivered, filtered, retried (an attempt failed and was scheduled again), dead_lettered, terminated (given up for good: see koffeeshop_trigger_dropped_total for why).",
		[]string{"trigger", "result"}, nil)
	repliesDesc = prometheus.NewDesc("koffeeshop_trigger_replies_total",
		"Reply events a Trigger's subscriber returned and the broker stored.",
		[]string{"trigger"}, nil)
	droppedDesc = prometheus.NewDesc("koffeeshop_trigger_dropped_total",
		"Events (or replies) a Trigger's dispatcher gave up, by reason: undecodable, panic, no_dead_letter_sink, reply_ttl_exhausted, dead_letter_refused. Each is also logged with its id and source.",
		[]string{"trigger", "reason"}, nil)
	inFlightDesc = prometheus.NewDesc("koffeeshop_trigger_in_flight",
		"Deliveries a Trigger's dispatcher has under way.",
		[]string{"trigger"}, nil)
)

// Add makes d's counters part of the collection.
func (c *Collector) Add(d *Dispatcher) {
	c.mu.Lock()
	c.disps = append(c.disps, d)
	c.mu.Unlock()
}

// Remove takes d's counters out of the collection, as a dispatcher that
// stopped for good (or is replaced by a new one for the same Trigger,
// whose series would otherwise be collected twice) has none to report.
func (c *Collector) Remove(d *Dispatcher) {
	c.mu.Lock()
	c.disps = slices.DeleteFunc(c.disps, func(x *Dispatcher) bool { return x == d })
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- eventsDesc
	ch <- repliesDesc
	ch <- droppedDesc
	ch <- inFlightDesc
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	disps := append([]*Dispatcher(nil), c.disps...)
	c.mu.Unlock()
	for _, d := range disps {
		s := d.stats
		for _, r := range []struct {
			name string
			v    int64
		}{
			{"delivered", s.Delivered.Load()},
			{"filtered", s.Filtered.Load()},
			{"retried", s.Retried.Load()},
			{"dead_lettered", s.DeadLettered.Load()},
			{"terminated", s.Terminated.Load()},
		} {
			ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(r.v), d.name, r.name)
		}
		ch <- prometheus.MustNewConstMetric(repliesDesc, prometheus.CounterValue, float64(s.Replies.Load()), d.name)
		for reason, n := range s.Drops() {
			ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(n), d.name, reason)
		}
		ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(s.InFlight.Load()), d.name)
	}
}
