// Package ops is the operations port of the data plane's processes (the
// Broker ingress and the Trigger dispatcher): Kubernetes probes and
// Prometheus metrics, on a port of their own so that the ingress's token
// and limits never stand between the kubelet or Prometheus and them.
package ops

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The paths the manifests probe and scrape.
const (
	ReadinessPath = "/health/readiness"
	LivenessPath  = "/health/liveness"
	MetricsPath   = "/metrics"
)

// DefaultAddr is where the probes and metrics are served.
const DefaultAddr = ":9090"

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves the probes and g's metrics. ready says why the process
// should get no work now (not synced, NATS away, draining), or nil; the
// reason is the body of the 503. Liveness only says the process serves
// HTTP: a NATS that is away is no reason to restart it, as it reconnects.
func Handler(ready func() error, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ReadinessPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET "+LivenessPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET "+MetricsPath, promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}
