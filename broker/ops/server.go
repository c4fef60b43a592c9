package ops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/koffeeshop/koffeeshop/broker/httpserver"
)

// Server serves Handler on a listener of its own. Once Drain is called its
// readiness says "draining" whatever ready says, so that the endpoints
// stop sending work to a process that is stopping before it stops.
type Server struct {
	srv      *http.Server
	draining atomic.Bool
	errc     chan error
}

// Serve serves the probes and g's metrics on ln until Shutdown. ready is
// Handler's: why the process should get no work now, or nil.
func Serve(ln net.Listener, ready func() error, g prometheus.Gatherer) *Server {
	s := &Server{errc: make(chan error, 1)}
	s.srv = httpserver.New(Handler(func() error {
		if s.draining.Load() {
			return errors.New("draining")
		}
		return ready()
	}, g), httpserver.Options{})
	go func() { s.errc <- fmt.Errorf("probes: %w", s.srv.Serve(ln)) }()
	return s
}

// Err receives why the server stopped serving before Shutdown, a reason
// for the process to stop too.
func (s *Server) Err() <-chan error { return s.errc }

// Drain turns readiness off for good; liveness and metrics are still
// served.
func (s *Server) Drain() { s.draining.Store(true) }

// Shutdown stops serving, waiting for the requests in flight until ctx is
// done.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("probes shutdown: %w", err)
	}
	return nil
}
