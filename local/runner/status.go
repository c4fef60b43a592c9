package runner

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/koffeeshop/koffeeshop/local/supervisor"
)

// Status is what GET /status answers.
type Status struct {
	// NATS is the server the shop stores its events in.
	NATS      string              `json:"nats"`
	Brokers   []BrokerStatus      `json:"brokers"`
	Functions []supervisor.Status `json:"functions"`
	Triggers  []TriggerStatus     `json:"triggers"`
	// Orders counts the board's orders by stage (failed: dead-lettered
	// and told to the customer); absent without a board.
	Orders map[string]int `json:"orders,omitempty"`
}

// BrokerStatus is a Broker and what its stream holds.
type BrokerStatus struct {
	Name   string `json:"name"`
	Stream string `json:"stream"`
	Events uint64 `json:"events"`
	Bytes  uint64 `json:"bytes"`
}

// TriggerStatus counts what a Trigger's dispatcher did.
type TriggerStatus struct {
	Name         string `json:"name"`
	Delivered    int64  `json:"delivered"`
	Filtered     int64  `json:"filtered"`
	Retried      int64  `json:"retried"`
	DeadLettered int64  `json:"deadLettered"`
	Terminated   int64  `json:"terminated"`
	// Dropped counts what was given up, by reason: undecodable, panic,
	// no_dead_letter_sink, reply_ttl_exhausted, dead_letter_refused. Each
	// is logged with the event's id and source.
	Dropped  map[string]int64 `json:"dropped"`
	InFlight int64            `json:"inFlight"`
	// Backlog is what waits in JetStream for the Trigger: pending and
	// unacknowledged events.
	Backlog int `json:"backlog"`
}

// Status returns a snapshot of every function and Trigger.
func (r *Runner) Status() Status {
	var s Status
	for _, p := range r.pools {
		s.Functions = append(s.Functions, p.Status())
	}
	sort.Slice(s.Functions, func(i, j int) bool { return s.Functions[i].Service < s.Functions[j].Service })
	for _, d := range r.disps {
		st := d.Stats()
		s.Triggers = append(s.Triggers, TriggerStatus{
			Name: d.Name(), Delivered: st.Delivered.Load(), Filtered: st.Filtered.Load(), Retried: st.Retried.Load(),
			DeadLettered: st.DeadLettered.Load(), Terminated: st.Terminated.Load(), Dropped: st.Drops(), InFlight: st.InFlight.Load(),
		})
	}
	s.NATS = r.NATSURL()
	if r.board != nil {
		s.Orders = r.board.Counts()
	}
	return s
}

// serveStatus answers GET /status: Status with what asks NATS, the
// Brokers' streams and the Triggers' backlogs.
func (r *Runner) serveStatus(w http.ResponseWriter, req *http.Request) {
	s := r.Status()
	ctx, cancel := context.WithTimeout(req.Context(), 5*time.Second)
	defer cancel()
	for _, b := range r.plan.Brokers {
		bs := BrokerStatus{Name: b.Ref.String(), Stream: b.Ref.StreamName()}
		if st, err := r.js.Stream(ctx, b.Ref.StreamName()); err == nil {
			bs.Events, bs.Bytes = st.CachedInfo().State.Msgs, st.CachedInfo().State.Bytes
		}
		s.Brokers = append(s.Brokers, bs)
	}
	for i, d := range r.disps {
		if info, err := d.Consumer().Info(ctx); err == nil {
			s.Triggers[i].Backlog = int(info.NumPending) + info.NumAckPending
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s)
}

// poolCollector exports the functions' scale to Prometheus at scrape time.
type poolCollector struct{ r *Runner }

var (
	instancesDesc = prometheus.NewDesc("koffeeshop_function_instances", "Instances of a function by state.", []string{"service", "state"}, nil)
	desiredDesc   = prometheus.NewDesc("koffeeshop_function_desired_instances", "Instances the autoscaler wants.", []string{"service"}, nil)
	fnInFlightDsc = prometheus.NewDesc("koffeeshop_function_in_flight", "Requests in flight at a function's instances.", []string{"service"}, nil)
	waitingDesc   = prometheus.NewDesc("koffeeshop_function_waiting", "Deliveries waiting for a ready instance.", []string{"service"}, nil)
	backlogDesc   = prometheus.NewDesc("koffeeshop_function_backlog", "Events pending or unacknowledged in JetStream for a function.", []string{"service"}, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{instancesDesc, desiredDesc, fnInFlightDsc, waitingDesc, backlogDesc} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.r.pools {
		s := p.Status()
		states := map[string]int{"starting": 0, "ready": 0, "draining": 0}
		for _, in := range s.Instances {
			states[in.State]++
		}
		for state, n := range states {
			ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), s.Service, state)
		}
		ch <- prometheus.MustNewConstMetric(desiredDesc, prometheus.GaugeValue, float64(s.Desired), s.Service)
		ch <- prometheus.MustNewConstMetric(fnInFlightDsc, prometheus.GaugeValue, float64(s.InFlight), s.Service)
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(s.Waiting), s.Service)
		ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(s.Backlog), s.Service)
	}
}
