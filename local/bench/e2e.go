package main

import (
	"context"
	"fmt"
	"time"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/loadgen"
)

// endToEnd measures the latency of an order from the moment it was
// due to be placed until its customer.notified event is in the Broker,
// through the three functions as processes (prepare-beverage brewing for
// 0 s), at a fixed offered load, and at a light one that shows the latency
// of the path itself rather than of a queue.
func (b *bench) endToEnd(ctx context.Context) ([]Metric, error) {
	s, err := b.startShop(ctx, b.opts.configDir)
	if err != nil {
		return nil, err
	}
	defer s.stop()
	w, err := watch(s.NATSURL(), coffee.TypeCustomerNotified)
	if err != nil {
		return nil, err
	}
	defer w.close()
	url := s.IngressURL() + "/default/default"
	const inFlight = 1024
	client := newClient(inFlight)
	perOrder := 10 * time.Second
	round := func(name string, rate float64, d time.Duration) (loadgen.Result, error) {
		n := int(rate * d.Seconds())
		return loadgen.Run(ctx, loadgen.Config{Count: n, Duration: d + perOrder, Concurrency: inFlight, Rate: rate},
			func(ctx context.Context, i int) error {
				ctx, cancel := context.WithTimeout(ctx, perOrder)
				defer cancel()
				return placeAndWait(ctx, client, w, url, fmt.Sprintf("%s-%d", name, i))
			})
	}
	// The functions start from zero: a first round brings them up and
	// lets the autoscalers settle.
	res, err := round("warm", b.opts.E2ERate, 2*time.Second)
	if err := check("warm-up", res, err); err != nil {
		return nil, err
	}
	b.progress.Info("e2e warm-up", "result", res.String())

	var metrics []Metric
	for _, rate := range []float64{b.opts.E2ELightRate, b.opts.E2ERate} {
		if rate <= 0 {
			continue
		}
		at, err := b.endToEndAt(ctx, rate, round)
		if err != nil {
			return nil, err
		}
		metrics = append(metrics, at...)
	}
	if b.opts.E2ESaturationCount > 0 {
		sat, err := b.capacity(ctx, s, func(ctx context.Context, customer string) error {
			return placeAndWait(ctx, client, w, url, customer)
		})
		if err != nil {
			return nil, err
		}
		metrics = append(metrics, sat...)
	}
	return metrics, nil
}

// endToEndAt runs the rounds at one offered rate.
func (b *bench) endToEndAt(ctx context.Context, rate float64, round func(string, float64, time.Duration) (loadgen.Result, error)) ([]Metric, error) {
	offered := fmt.Sprintf("%.0f orders/s", rate)
	var p50, p99 []float64
	for r := range b.opts.Rounds {
		var res loadgen.Result
		run := func() (err error) {
			res, err = round(fmt.Sprintf("%.0f-r%d", rate, r), rate, b.opts.E2EDuration)
			return err
		}
		if r == 0 && rate == b.opts.E2ERate {
			run = b.profiled("e2e", run)
		}
		err := run()
		if err := check("orders", res, err); err != nil {
			return nil, err
		}
		b.progress.Info("e2e", "offered", offered, "round", r, "result", res.String())
		p50 = append(p50, ms(res.Latency.Quantile(.5)))
		p99 = append(p99, ms(res.Latency.Quantile(.99)))
	}
	m := []Metric{
		newMetric("order placed→notified p50 @ "+offered, millis, p50),
		newMetric("order placed→notified p99 @ "+offered, millis, p99),
	}
	if rate == b.opts.E2ERate {
		m[1] = m[1].below(20)
	}
	return m, nil
}
