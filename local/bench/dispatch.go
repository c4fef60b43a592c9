package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go/jetstream"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/loadgen"
	"github.com/koffeeshop/koffeeshop/local/manifest"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// dispatch measures events per second from the stream through one
// Trigger to a no-op subscriber, against a raw JetStream pull consumer on
// the same stream acking the same events.
func (b *bench) dispatch(ctx context.Context) ([]Metric, error) {
	j, err := b.startJetStream()
	if err != nil {
		return nil, err
	}
	defer j.stop()
	var conns atomic.Int64
	subURL, stopSub, err := serveCounting(noop(http.StatusAccepted), &conns)
	if err != nil {
		return nil, err
	}
	defer stopSub()
	sub, err := url.Parse(subURL)
	if err != nil {
		return nil, err
	}
	set, err := manifest.LoadDir(ctx, b.opts.configDir)
	if err != nil {
		return nil, err
	}
	if len(set.Brokers) == 0 {
		return nil, fmt.Errorf("no Broker in %s", b.opts.configDir)
	}
	delivery := set.Brokers[0].Spec.Delivery
	store, err := broker.NewStore(j.nc, 0)
	if err != nil {
		return nil, err
	}
	n := b.opts.DispatchCount
	var ours, raw, rawHTTP, oursCPU, rawHTTPCPU []float64
	var oursConns, rawConns int64
	for r := range b.opts.Rounds {
		ref := broker.Ref{Namespace: "bench", Name: fmt.Sprintf("dispatch-%d", r)}
		stream, err := broker.EnsureStream(ctx, j.js, ref, broker.StreamOptions{})
		if err != nil {
			return nil, err
		}
		trigger, err := parseTrigger(ctx, ref, subURL)
		if err != nil {
			return nil, err
		}
		d, err := triggers.New(ctx, j.js, store, dispatchClient(), triggers.Config{
			Trigger:     trigger,
			Broker:      ref,
			Delivery:    delivery,
			Subscriber:  triggers.URL{U: sub},
			Concurrency: b.opts.DispatchConcurrency,
		}, b.log)
		if err != nil {
			return nil, err
		}
		// The raw consumer is configured as the Trigger's.
		info, err := d.Consumer().Info(ctx)
		if err != nil {
			return nil, err
		}
		rawCfg := info.Config
		rawCfg.Durable, rawCfg.Name, rawCfg.Description = "raw", "", "raw JetStream consumer"
		rawCons, err := j.js.CreateOrUpdateConsumer(ctx, ref.StreamName(), rawCfg)
		if err != nil {
			return nil, fmt.Errorf("raw consumer: %w", err)
		}
		rawCfg.Durable, rawCfg.Description = "raw-http", "raw JetStream consumer posting each message"
		httpCons, err := j.js.CreateOrUpdateConsumer(ctx, ref.StreamName(), rawCfg)
		if err != nil {
			return nil, fmt.Errorf("raw consumer: %w", err)
		}

		// The same events the ingress stores, through the same Store.
		res, err := loadgen.Run(ctx, loadgen.Config{Count: n, Duration: b.opts.Limit, Concurrency: 64}, func(ctx context.Context, i int) error {
			ev := newOrderEvent(fmt.Sprintf("d%d-%d", r, i))
			_, err := store.Publish(ctx, ref, &ev)
			return err
		})
		if err := check("preload", res, err); err != nil {
			return nil, err
		}

		rate, err := consumeRaw(rawCons, n, b.opts.Limit)
		if err != nil {
			return nil, fmt.Errorf("raw consumer: %w", err)
		}
		raw = append(raw, rate)
		b.progress.Info("raw consumer", "round", r, "rate", rate)

		c0 := conns.Load()
		cpu, err := cpuPer(n, func() (err error) {
			rate, err = consumeAndPost(ctx, httpCons, n, b.opts.DispatchConcurrency, b.opts.Limit, dispatchClient(), subURL)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("raw consumer posting: %w", err)
		}
		rawConns += conns.Load() - c0
		rawHTTP, rawHTTPCPU = append(rawHTTP, rate), append(rawHTTPCPU, cpu)
		b.progress.Info("raw consumer posting", "round", r, "rate", rate)
		c0 = conns.Load()

		run := func() (err error) {
			rate, err = runDispatcher(ctx, d, n, b.opts.Limit)
			return err
		}
		if r == 0 {
			run = b.profiled("dispatch", run)
		}
		cpu, err = cpuPer(n, run)
		if err != nil {
			return nil, fmt.Errorf("dispatcher: %w", err)
		}
		ours, oursCPU = append(ours, rate), append(oursCPU, cpu)
		oursConns += conns.Load() - c0
		b.progress.Info("dispatch", "round", r, "rate", rate)
		if err := j.js.DeleteStream(ctx, stream.CachedInfo().Config.Name); err != nil {
			return nil, fmt.Errorf("delete stream: %w", err)
		}
	}
	b.report.Notes = append(b.report.Notes, fmt.Sprintf("dispatch: the subscriber accepted %d connections for %d deliveries (%d for the raw consumer posting)",
		oursConns, n*b.opts.Rounds, rawConns))
	return []Metric{
		newMetric("dispatch throughput, 1 Trigger", perSecond, ours).
			against("raw JetStream consumer", raw),
		newMetric("dispatch throughput vs HTTP limit", perSecond, ours).
			against("raw consumer + plain HTTP POST", rawHTTP).atLeastRatio(0.95),
		newMetric("dispatch CPU per event (whole process)", micros, oursCPU).
			against("raw consumer + plain HTTP POST", rawHTTPCPU),
	}, nil
}

// parseTrigger reads a Trigger for order.placed events to sub through the
// manifest package, with Knative's defaults and validation.
func parseTrigger(ctx context.Context, ref broker.Ref, sub string) (*eventingv1.Trigger, error) {
	doc := fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: %[1]s
  namespace: %[2]s
  annotations: {eventing.knative.dev/broker.class: MTChannelBasedBroker}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: noop
  namespace: %[2]s
spec:
  broker: %[1]s
  filter:
    attributes:
      type: %[3]s
  subscriber:
    uri: %[4]s
`, ref.Name, ref.Namespace, coffee.TypeOrderPlaced, sub)
	set, err := manifest.Parse(ctx, strings.NewReader(doc), "dispatch-trigger")
	if err != nil {
		return nil, err
	}
	return set.Triggers[0], nil
}

// consumeRaw pulls n messages with the client's default pull settings,
// acking each, and returns the rate.
func consumeRaw(cons jetstream.Consumer, n int, limit time.Duration) (float64, error) {
	start := time.Now()
	it, err := cons.Messages()
	if err != nil {
		return 0, err
	}
	defer it.Stop()
	stop := time.AfterFunc(limit, it.Stop)
	defer stop.Stop()
	for i := range n {
		msg, err := it.Next()
		if err != nil {
			return 0, fmt.Errorf("after %d of %d messages: %w", i, n, err)
		}
		if err := msg.Ack(); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// runDispatcher runs d until it delivered n events and returns the rate.
func runDispatcher(ctx context.Context, d *triggers.Dispatcher, n int, limit time.Duration) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- d.Run(ctx) }()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for d.Stats().Delivered.Load() < int64(n) {
		select {
		case <-tick.C:
		case err := <-done:
			return 0, fmt.Errorf("stopped early: %v", err)
		case <-deadline.C:
			return 0, fmt.Errorf("%d of %d delivered: %w", d.Stats().Delivered.Load(), n, errTimeout)
		}
	}
	rate := float64(n) / time.Since(start).Seconds()
	cancel()
	if err := <-done; err != nil {
		return 0, err
	}
	if s := d.Stats(); s.Retried.Load()+s.Terminated.Load()+s.DeadLettered.Load() > 0 {
		return 0, fmt.Errorf("deliveries failed: %d retried, %d terminated, %d dead-lettered", s.Retried.Load(), s.Terminated.Load(), s.DeadLettered.Load())
	}
	return rate, nil
}

// newOrderEvent is an order.placed event as a client sends it.
func newOrderEvent(id string) cloudevents.Event {
	ev := cloudevents.NewEvent()
	ev.SetID(id)
	ev.SetSource("/bench")
	ev.SetType(coffee.TypeOrderPlaced)
	_ = ev.SetData(cloudevents.ApplicationJSON, []byte(order("c-"+id)))
	return ev
}

// consumeAndPost is the least a dispatcher must do: pull n messages and,
// conc at a time, POST each stored event as it is (binary mode) to url
// with client, acking it after a 2xx. It returns the rate.
func consumeAndPost(ctx context.Context, cons jetstream.Consumer, n, conc int, limit time.Duration, client *http.Client, url string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	it, err := cons.Messages(jetstream.PullMaxMessages(conc))
	if err != nil {
		return 0, err
	}
	defer it.Stop()
	msgs := make(chan jetstream.Msg)
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for msg := range msgs {
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(msg.Data()))
				if err != nil {
					errs <- err
					return
				}
				// The stored message is a binary-mode CloudEvent: its
				// headers go out as HTTP headers, its data as the body.
				for k, vs := range msg.Headers() {
					for _, v := range vs {
						req.Header.Add(k, v)
					}
				}
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
					return
				}
				if err := msg.Ack(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	var ferr error
	for i := 0; i < n && ferr == nil; i++ {
		msg, err := it.Next()
		if err != nil {
			ferr = fmt.Errorf("after %d of %d messages: %w", i, n, err)
			break
		}
		select {
		case msgs <- msg:
		case ferr = <-errs:
		}
	}
	close(msgs)
	wg.Wait()
	if ferr == nil {
		select {
		case ferr = <-errs:
		default:
		}
	}
	if ferr != nil {
		return 0, ferr
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// dispatchClient is a new HTTP client with the transport the runner gives
// its dispatchers.
func dispatchClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}}
}
