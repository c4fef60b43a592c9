package runner

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/local/board"
	"github.com/koffeeshop/koffeeshop/local/supervisor"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// buildBoard mounts the web board, which follows the first Broker's
// stream in this process (see Board.Follow).
func (r *Runner) buildBoard(mux *http.ServeMux) error {
	b := r.set.Brokers[0]
	ref := broker.Ref{Namespace: b.Namespace, Name: b.Name}
	var takeOrder triggers.Endpoint
	if p, ok := r.pools[types.NamespacedName{Namespace: b.Namespace, Name: "take-order"}]; ok {
		takeOrder = p
	}
	bd, err := board.New(board.Deps{
		Publisher: r.store,
		Broker:    ref,
		TakeOrder: takeOrder,
		Tracer:    r.tracing.Provider(),
		Status:    func() any { return r.Status() },
		History:   func() any { return r.History() },
		Trace: func(id string) any {
			if r.traces == nil {
				return nil
			}
			if spans := r.traces.Trace(id); len(spans) > 0 {
				return spans
			}
			return nil
		},
		Kill: func(service string) (string, error) {
			p, ok := r.pools[types.NamespacedName{Namespace: b.Namespace, Name: service}]
			if !ok {
				return "", board.ErrNotFound(service)
			}
			name, err := p.KillOne()
			if errors.Is(err, supervisor.ErrNoInstance) {
				return "", fmt.Errorf("%w: it is scaled to zero", err)
			}
			return name, err
		},
		Log: r.log.With("component", "board"),
	})
	if err != nil {
		return err
	}
	r.board = bd
	for _, pattern := range board.Routes() {
		var h http.Handler = r.board
		if r.opts.HTTP.Token != "" && strings.HasPrefix(pattern, http.MethodPost+" ") {
			// Placing an order and killing an instance act: with a
			// token they need it, like the ingress. The page and its
			// event stream only read.
			h = broker.RequireBearer(r.opts.HTTP.Token, h)
		}
		mux.Handle(pattern, h)
	}
	return nil
}

// BoardURL is the address of the web board.
func (r *Runner) BoardURL() string { return r.IngressURL() + board.PagePath }
