package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/loadgen"
	"github.com/koffeeshop/koffeeshop/local/supervisor"
)

const minScaleZero = `autoscaling.knative.dev/min-scale: "0"`

// coldStart measures the cold start: the time from placing an order to
// take-order's order.accepted reaching the Broker when take-order is at
// zero instances, against the same order with take-order warm; and the
// runner's own activation-to-ready time of the instance (its status
// LastColdStart).
//
// Only take-order scales to zero: prepare-beverage and notify stay warm,
// and each measurement starts once the order before it was notified.
// Otherwise the warm order would run while the cold one's downstream
// functions start their processes on the same two cores, and come out
// slower than the cold one.
func (b *bench) coldStart(ctx context.Context) ([]Metric, error) {
	cfg, err := copyConfig(b.opts.configDir, b.tmp, minScaleZero,
		minScaleZero+"\n        autoscaling.knative.dev/scale-to-zero-pod-retention-period: \"1s\"")
	if err != nil {
		return nil, err
	}
	for _, f := range []string{"prepare-beverage.yaml", "notify.yaml"} {
		if err := replaceIn(filepath.Join(cfg, f), minScaleZero, `autoscaling.knative.dev/min-scale: "1"`); err != nil {
			return nil, err
		}
	}
	s, err := b.startShop(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer s.stop()
	w, err := watch(s.NATSURL(), coffee.TypeOrderAccepted)
	if err != nil {
		return nil, err
	}
	defer w.close()
	done, err := watch(s.NATSURL(), coffee.TypeCustomerNotified)
	if err != nil {
		return nil, err
	}
	defer done.close()
	url := s.IngressURL() + "/default/default"
	client := newClient(1)
	accepted := func(customer string) (float64, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		notified := done.expect(customer)
		start := time.Now()
		if err := placeAndWait(ctx, client, w, url, customer); err != nil {
			return 0, fmt.Errorf("order %s: %w", customer, err)
		}
		took := ms(time.Since(start))
		select {
		case <-notified:
			return took, nil
		case <-ctx.Done():
			return 0, fmt.Errorf("order %s not notified: %w", customer, ctx.Err())
		}
	}
	var cold, warm, ready []float64
	for r := range b.opts.ColdRounds {
		if err := waitZero(ctx, s, "take-order", 30*time.Second); err != nil {
			return nil, err
		}
		c, err := accepted(fmt.Sprintf("cold-%d", r))
		if err != nil {
			return nil, err
		}
		ready = append(ready, ms(fnStatus(s, "take-order").LastColdStart))
		wm, err := accepted(fmt.Sprintf("warm-%d", r))
		if err != nil {
			return nil, err
		}
		cold, warm = append(cold, c), append(warm, wm)
		b.progress.Info("cold start", "round", r, "coldMs", c, "warmMs", wm, "readyMs", ready[len(ready)-1])
	}
	b.report.Notes = append(b.report.Notes, fmt.Sprintf("cold start: take-order activation→ready (runner status lastColdStart) median %.1f ms", loadgen.Median(ready)))
	return []Metric{
		newMetric("cold start: order→accepted, take-order at 0", millis, cold).against("same order, take-order warm", warm),
	}, nil
}

// replaceIn replaces old with new in the file at path; old must be there.
func replaceIn(path, old, new string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), old) {
		return fmt.Errorf("%s: %q not found", path, old)
	}
	return os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o644)
}

func fnStatus(s *shop, name string) supervisor.Status {
	for _, f := range s.Status().Functions {
		if f.Service == name {
			return f
		}
	}
	return supervisor.Status{}
}

// waitZero waits until the Service has no instance left.
func waitZero(ctx context.Context, s *shop, name string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for len(fnStatus(s, name).Instances) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not scale to zero within %s", name, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
