package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/loadgen"
)

// tracingCost measures what tracing costs the shop: its saturated
// throughput with tracing off, and on with every order sampled, with one
// in ten, and with none (what carrying the context alone costs),
// exporting to an OTLP/HTTP collector (one of the bench's, that reads and
// drops what it gets) besides the runner's own store. With
// -cpuprofile-dir each run leaves the runner's profile and its function
// instances' apart.
func (b *bench) tracingCost(ctx context.Context) ([]Metric, error) {
	sink, stopSink, err := serveHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	if err != nil {
		return nil, err
	}
	defer stopSink()
	variants := []struct {
		name string
		otel map[string]string
	}{
		{"off", map[string]string{"OTEL_SDK_DISABLED": "true"}},
		{"100", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_TRACES_SAMPLER": "parentbased_always_on"}},
		{"10", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}},
		{"0", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_TRACES_SAMPLER": "parentbased_always_off"}},
	}
	rates := map[string][]float64{}
	for r := range b.opts.Rounds {
		for _, v := range variants {
			var rate float64
			run := fmt.Sprintf("tracing-%s-%d", v.name, r)
			err := b.profiled(run, func() error {
				var err error
				rate, err = b.saturatedWith(ctx, v.otel, fmt.Sprintf("trace-%s-%d", v.name, r))
				return err
			})()
			if b.opts.profileDir != "" {
				// The function instances' profiles of this run, apart.
				_ = os.Rename(filepath.Join(b.opts.profileDir, "functions"), filepath.Join(b.opts.profileDir, "functions-"+run))
			}
			if err != nil {
				return nil, fmt.Errorf("tracing %s: %w", v.name, err)
			}
			rates[v.name] = append(rates[v.name], rate)
			b.progress.Info("tracing cost", "sampledPercent", v.name, "round", r, "ordersPerSecond", rate)
		}
	}
	return []Metric{
		newMetric("orders/s saturated, tracing at 100%", perSecond, rates["100"]).against("tracing off", rates["off"]),
		newMetric("orders/s saturated, tracing at 10%", perSecond, rates["10"]).against("tracing off", rates["off"]).atLeastRatio(0.9),
		newMetric("orders/s saturated, tracing at 0%", perSecond, rates["0"]).against("tracing off", rates["off"]),
	}, nil
}

// saturatedWith runs a shop with the OpenTelemetry settings otel and
// returns the orders it completes per second when saturated.
func (b *bench) saturatedWith(ctx context.Context, otel map[string]string, prefix string) (float64, error) {
	// The shop runs in this process and its functions inherit its
	// environment: the OpenTelemetry SDK reads its settings there.
	restore := setEnv(otel)
	defer restore()
	s, err := b.startShop(ctx, b.opts.configDir)
	if err != nil {
		return 0, err
	}
	defer s.stop()
	w, err := watch(s.NATSURL(), coffee.TypeCustomerNotified)
	if err != nil {
		return 0, err
	}
	defer w.close()
	url := s.IngressURL() + "/default/default"
	const inFlight = 512
	client := newClient(inFlight)
	run := func(name string, n int) (loadgen.Result, error) {
		res, err := loadgen.Run(ctx, loadgen.Config{Count: n, Duration: b.opts.Limit, Concurrency: inFlight},
			func(ctx context.Context, i int) error {
				ctx, cancel := context.WithTimeout(ctx, b.opts.Limit)
				defer cancel()
				return placeAndWait(ctx, client, w, url, fmt.Sprintf("%s-%s-%d", prefix, name, i))
			})
		return res, check(name, res, err)
	}
	// The functions start from zero: a first run brings them up.
	if _, err := run("warm", 2000); err != nil {
		return 0, err
	}
	res, err := run("saturated", b.opts.E2ESaturationCount/2)
	if err != nil {
		return 0, err
	}
	return res.Throughput(), nil
}

// otelVars are the OpenTelemetry settings the tracing rounds set.
var otelVars = []string{"OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}

// setEnv sets otelVars as vars says (unset when absent) and returns a func
// that puts back what was there.
func setEnv(vars map[string]string) (restore func()) {
	old := map[string]*string{}
	for _, k := range otelVars {
		if v, ok := os.LookupEnv(k); ok {
			old[k] = &v
		} else {
			old[k] = nil
		}
		if v, ok := vars[k]; ok {
			_ = os.Setenv(k, v)
		} else {
			_ = os.Unsetenv(k)
		}
	}
	return func() {
		for k, v := range old {
			if v == nil {
				_ = os.Unsetenv(k)
			} else {
				_ = os.Setenv(k, *v)
			}
		}
	}
}
