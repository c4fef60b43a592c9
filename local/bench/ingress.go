package main

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/loadgen"
)

// ingress measures durable ingest through the Broker ingress
// (binary-mode CloudEvents, 202 only once stored; put together as the
// runner does) against the same load on a no-op net/http handler, and the
// raw JetStream publish rate of a Go client on the same server: C
// synchronous publishers, and one publisher pipelining up to C
// asynchronous publishes. The CPU rows count everything in this process
// per request: load generator, HTTP server, handler and embedded NATS.
func (b *bench) ingress(ctx context.Context) ([]Metric, error) {
	in, err := b.startIngress(ctx)
	if err != nil {
		return nil, err
	}
	defer in.stop()
	noopURL, stopNoop, err := serveHTTP(noop(http.StatusAccepted))
	if err != nil {
		return nil, err
	}
	defer stopNoop()

	nc, err := nats.Connect(in.natsURL, nats.Name("koffeeshop-bench-publisher"))
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	conc := b.opts.IngressConcurrency
	var asyncErrs atomic.Int64
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(conc),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { asyncErrs.Add(1) }))
	if err != nil {
		return nil, err
	}
	stream, err := js.Stream(ctx, defaultBroker.StreamName())
	if err != nil {
		return nil, fmt.Errorf("stream: %w", err)
	}

	ingressURL := in.url + "/default/default"
	post := func(url, round string) loadgen.Op {
		client := newClient(conc)
		return func(ctx context.Context, i int) error {
			id := round + "-" + itoa(i)
			return postEvent(ctx, client, url, "/bench", id, coffee.TypeOrderPlaced, order("c-"+itoa(i)))
		}
	}
	load := loadgen.Config{Count: b.opts.IngressCount, Duration: b.opts.Limit, Concurrency: conc}
	warm := loadgen.Config{Count: min(2000, b.opts.IngressCount), Duration: b.opts.Limit, Concurrency: conc}
	for _, url := range []string{ingressURL, noopURL} {
		if res, err := loadgen.Run(ctx, warm, post(url, "warm")); err != nil || res.Err != nil {
			return nil, fmt.Errorf("warm-up of %s: %v %v", url, err, res.Err)
		}
	}
	// The raw publishes store what the ingress stores: the same bytes and
	// headers, on the same subject, each with its own Nats-Msg-Id.
	stored, err := stream.GetLastMsgForSubject(ctx, defaultBroker.TypeSubject(coffee.TypeOrderPlaced))
	if err != nil {
		return nil, fmt.Errorf("read a stored event: %w", err)
	}
	rawMsg := func(round string, i int) *nats.Msg {
		return &nats.Msg{Subject: stored.Subject, Data: stored.Data, Header: nats.Header{
			"Content-Type":                 stored.Header["Content-Type"],
			"Ce-Type":                      stored.Header["Ce-Type"],
			jetstream.MsgIDHeader:          {round + "-" + itoa(i)},
			jetstream.ExpectedStreamHeader: {defaultBroker.StreamName()},
		}}
	}

	var ours, plain, raw, pipelined []float64
	var oursP50, oursP99, httpP50, httpP99, rawP50, rawP99 []float64
	var oursCPU, plainCPU, storeCPU []float64
	for r := range b.opts.Rounds {
		round := fmt.Sprintf("r%d", r)
		var res loadgen.Result
		run := func() (err error) {
			res, err = loadgen.Run(ctx, load, post(ingressURL, round))
			return err
		}
		if r == 0 {
			run = b.profiled("ingress", run)
		}
		cpu, err := cpuPer(load.Count, run)
		if err := check("ingress", res, err); err != nil {
			return nil, err
		}
		oursCPU = append(oursCPU, cpu)
		ours = append(ours, res.Throughput())
		oursP50, oursP99 = append(oursP50, ms(res.Latency.Quantile(.5))), append(oursP99, ms(res.Latency.Quantile(.99)))
		b.progress.Info("ingress", "round", r, "result", res.String())

		cpu, err = cpuPer(load.Count, func() (err error) {
			res, err = loadgen.Run(ctx, load, post(noopURL, round))
			return err
		})
		if err := check("no-op http", res, err); err != nil {
			return nil, err
		}
		plainCPU = append(plainCPU, cpu)
		plain = append(plain, res.Throughput())
		httpP50, httpP99 = append(httpP50, ms(res.Latency.Quantile(.5))), append(httpP99, ms(res.Latency.Quantile(.99)))
		b.progress.Info("no-op http", "round", r, "result", res.String())

		res, err = loadgen.Run(ctx, load, func(ctx context.Context, i int) error {
			_, err := js.PublishMsg(ctx, rawMsg("sync-"+round, i))
			return err
		})
		if err := check("jetstream publish", res, err); err != nil {
			return nil, err
		}
		raw = append(raw, res.Throughput())
		rawP50, rawP99 = append(rawP50, ms(res.Latency.Quantile(.5))), append(rawP99, ms(res.Latency.Quantile(.99)))
		b.progress.Info("jetstream publish", "round", r, "result", res.String())

		var rate float64
		cpu, err = cpuPer(load.Count, func() (err error) {
			rate, err = publishPipelined(ctx, js, b.opts.IngressCount, b.opts.Limit, func(i int) *nats.Msg { return rawMsg("async-"+round, i) })
			return err
		})
		if err == nil && asyncErrs.Load() > 0 {
			err = fmt.Errorf("%d publishes failed", asyncErrs.Load())
		}
		if err != nil {
			return nil, fmt.Errorf("jetstream async publish: %w", err)
		}
		pipelined, storeCPU = append(pipelined, rate), append(storeCPU, cpu)
		b.progress.Info("jetstream async publish", "round", r, "rate", rate)

		if err := stream.Purge(ctx); err != nil {
			return nil, fmt.Errorf("purge: %w", err)
		}
	}
	b.report.Notes = append(b.report.Notes, fmt.Sprintf("JetStream publish latency with %d sync publishers: p50 %.2f ms, p99 %.2f ms (medians)",
		conc, loadgen.Median(rawP50), loadgen.Median(rawP99)))
	return []Metric{
		newMetric("ingress throughput vs HTTP limit", perSecond, ours).against("no-op net/http", plain).atLeastRatio(0.8),
		newMetric("ingress throughput vs storage limit", perSecond, ours).against(fmt.Sprintf("%d sync JetStream publishers", conc), raw),
		newMetric("ingress throughput vs pipelined storage", perSecond, ours).against(fmt.Sprintf("async JetStream publish, %d pending", conc), pipelined),
		newMetric("ingress latency p50", millis, oursP50).against("no-op net/http", httpP50),
		newMetric("ingress latency p99", millis, oursP99).against("no-op net/http", httpP99),
		newMetric("ingress CPU per event (whole process)", micros, oursCPU).against("no-op net/http", plainCPU),
		// What a durable 202 cannot do without: the HTTP request and the
		// JetStream store. Their sum bounds the ingress's ratio to the
		// no-op handler: no-op / (no-op + store).
		newMetric("ingress CPU per event vs HTTP + storage floor", micros, oursCPU).
			against("no-op net/http + async JetStream publish", sumRuns(plainCPU, storeCPU)),
	}, nil
}

// check turns a load run with failures into an error.
func check(what string, res loadgen.Result, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if res.Err != nil || res.Skipped > 0 {
		return fmt.Errorf("%s: %d failed, %d not sent in time: %v", what, res.Failed, res.Skipped, res.Err)
	}
	return nil
}

// publishPipelined publishes count messages from one goroutine with up to
// the JetStream context's max pending asynchronous publishes in flight and
// returns the rate at which they were stored.
func publishPipelined(ctx context.Context, js jetstream.JetStream, count int, limit time.Duration, msg func(i int) *nats.Msg) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	for i := range count {
		if _, err := js.PublishMsgAsync(msg(i)); err != nil {
			return 0, err
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, fmt.Errorf("%d publishes not acknowledged: %w", js.PublishAsyncPending(), ctx.Err())
	}
	return float64(count) / time.Since(start).Seconds(), nil
}

// sumRuns adds two metrics' rounds, round by round.
func sumRuns(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = a[i] + b[i]
	}
	return out
}
