package supervisor

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric/noop"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/types"
	"knative.dev/serving/pkg/autoscaler/aggregation"
	am "knative.dev/serving/pkg/autoscaler/metrics"
	"knative.dev/serving/pkg/autoscaler/scaling"
)

// Scaling is a Service's autoscaling, as Knative's KPA applies it.
type Scaling struct {
	MinScale, MaxScale int // MaxScale 0: no upper bound
	InitialScale       int
	ActivationScale    int
	// Target is the in-flight requests per instance the autoscaler aims
	// for; Total what one instance can take.
	Target, Total  float64
	StableWindow   time.Duration
	PanicWindow    time.Duration
	PanicThreshold float64 // a factor: 2 is 200%
	// IdleWindow is how long a Service must be without demand before its
	// last instance is stopped (when MinScale is 0).
	IdleWindow time.Duration
	// Tick is how often demand is sampled and the decision taken.
	Tick time.Duration
}

// DemandFunc reports demand that waits outside the instances: the events
// pending or unacknowledged in the consumers of the Triggers that deliver
// to the Service.
type DemandFunc func(ctx context.Context) (int, error)

// autoscaler decides a Pool's size with Knative Serving's own decider over
// concurrency averaged in a stable and a panic window.
type autoscaler struct {
	s       Scaling
	decider scaling.UniScaler
	log     *zap.SugaredLogger

	mu     sync.Mutex
	stable *aggregation.TimedFloat64Buckets
	panic  *aggregation.TimedFloat64Buckets
}

func newAutoscaler(ns, name string, s Scaling, ready func() int) *autoscaler {
	a := &autoscaler{
		s:      s,
		log:    zap.NewNop().Sugar(),
		stable: aggregation.NewTimedFloat64Buckets(s.StableWindow, bucket),
		panic:  aggregation.NewTimedFloat64Buckets(s.PanicWindow, bucket),
	}
	a.decider = scaling.New(attribute.NewSet(), noop.NewMeterProvider(), ns, name, a, readyCounter(ready), &scaling.DeciderSpec{
		MaxScaleUpRate:      1000,
		MaxScaleDownRate:    2,
		ScalingMetric:       "concurrency",
		TargetValue:         s.Target,
		TotalValue:          s.Total,
		TargetBurstCapacity: 0,
		ActivatorCapacity:   100,
		PanicThreshold:      s.PanicThreshold,
		StableWindow:        s.StableWindow,
		InitialScale:        int32(s.InitialScale),
		Reachable:           true,
		ActivationScale:     int32(s.ActivationScale),
	})
	return a
}

// bucket is the granularity of the averaging windows: Knative's buckets
// hold whole seconds.
const bucket = time.Second

// record adds a demand sample taken once per Tick. A bucket sums what it
// is given, so a sample weighs its share of the bucket's second.
func (a *autoscaler) record(now time.Time, demand float64) {
	w := demand * float64(min(a.s.Tick, bucket)) / float64(bucket)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stable.Record(now, w)
	a.panic.Record(now, w)
}

// desired is the decider's instance count, or -1 without data yet.
func (a *autoscaler) desired(now time.Time) int {
	r := a.decider.Scale(a.log, now)
	if !r.ScaleValid {
		return -1
	}
	return int(r.DesiredPodCount)
}

// StableAndPanicConcurrency implements Knative's MetricClient.
func (a *autoscaler) StableAndPanicConcurrency(_ types.NamespacedName, now time.Time) (float64, float64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stable.IsEmpty(now) {
		return 0, 0, am.ErrNoData
	}
	return a.stable.WindowAverage(now), a.panic.WindowAverage(now), nil
}

// StableAndPanicRPS implements Knative's MetricClient; only concurrency is
// used here.
func (a *autoscaler) StableAndPanicRPS(types.NamespacedName, time.Time) (float64, float64, error) {
	return 0, 0, am.ErrNoData
}

type readyCounter func() int

func (r readyCounter) ReadyCount() (int, error)    { return r(), nil }
func (r readyCounter) NotReadyCount() (int, error) { return 0, nil }

// clamp bounds n by min-scale and max-scale.
func (s Scaling) clamp(n int) int {
	n = max(n, s.MinScale)
	if s.MaxScale > 0 {
		n = min(n, s.MaxScale)
	}
	return n
}

// autoscale samples demand and resizes the Pool once.
func (p *Pool) autoscale(ctx context.Context, now time.Time) {
	backlog := 0
	if p.demand != nil {
		n, err := p.demand(ctx)
		if err != nil {
			p.log.Debug("backlog unknown", "err", err)
		}
		backlog = n
	}
	p.mu.Lock()
	inflight := 0
	for in := range p.insts {
		inflight += in.inflight
	}
	// Deliveries in flight or waiting for an instance are unacknowledged
	// in JetStream too: the larger of the two counts is the demand.
	demand := max(inflight+p.waiting, backlog)
	p.backlog = backlog
	if demand > 0 {
		p.lastDemand = now
	}
	p.mu.Unlock()

	p.scaler.record(now, float64(demand))
	want := p.scaler.desired(now) // reads the ready count under p.mu

	p.mu.Lock()
	defer p.mu.Unlock()
	if want < 0 {
		want = p.desired
	}
	idle := now.Sub(p.lastDemand) >= p.scaling.IdleWindow
	switch {
	case demand > 0:
		want = max(want, 1)
	case !idle:
		// Keep the last instance warm until the idle window passed.
		want = max(want, min(p.desired, 1))
	case p.scaling.MinScale == 0:
		want = 0
	}
	p.setDesiredLocked(p.scaling.clamp(want), reason(demand, idle), inflight)
}

func reason(demand int, idle bool) string {
	switch {
	case demand > 0:
		return "demand"
	case idle:
		return "idle"
	default:
		return "stable window"
	}
}

// setDesiredLocked changes the instance count and logs the scale event.
func (p *Pool) setDesiredLocked(n int, why string, inflight int) {
	if n == p.desired {
		return
	}
	if p.desired == 0 && n > 0 {
		p.activatedAt = time.Now()
	}
	p.log.Info("scale", "from", p.desired, "to", n, "reason", why,
		"ready", p.readyLocked(), "inFlight", inflight, "waiting", p.waiting, "backlog", p.backlog)
	p.desired = n
	p.wake()
}
