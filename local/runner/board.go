package runner

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/local/board"
	"github.com/koffeeshop/koffeeshop/local/supervisor"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// BoardTrigger is the name of the Trigger that feeds the web board.
const BoardTrigger = "koffeeshop-board"

// buildBoard mounts the web board and subscribes it to the first Broker
// with an ordinary Trigger for every com.koffeeshop.* event.
func (r *Runner) buildBoard(ctx context.Context, mux *http.ServeMux) error {
	b := r.set.Brokers[0]
	ref := broker.Ref{Namespace: b.Namespace, Name: b.Name}
	feed, err := url.Parse(r.IngressURL() + board.FeedPath)
	if err != nil {
		return err
	}
	t := &eventingv1.Trigger{
		ObjectMeta: metav1.ObjectMeta{Name: BoardTrigger, Namespace: b.Namespace},
		Spec: eventingv1.TriggerSpec{
			Broker:     b.Name,
			Filters:    []eventingv1.SubscriptionsAPIFilter{{Prefix: map[string]string{"type": "com.koffeeshop."}}},
			Subscriber: duckv1.Destination{URI: apis.HTTP(feed.Host)},
		},
	}
	t.Spec.Subscriber.URI.Path = board.FeedPath
	if fe := t.Validate(ctx); fe != nil {
		return fmt.Errorf("board trigger: %w", fe)
	}
	client := r.client
	if r.opts.IngressToken != "" {
		// The feed is a route that writes: it takes the token too.
		client = &http.Client{Transport: bearer{token: r.opts.IngressToken, next: r.client.Transport}}
	}
	d, err := triggers.New(ctx, r.js, r.store, client, triggers.Config{
		Trigger:     t,
		Broker:      ref,
		Delivery:    triggers.EffectiveDelivery(t, b),
		Subscriber:  triggers.URL{U: feed},
		Concurrency: 16,
	}, r.log.With("component", "dispatcher"))
	if err != nil {
		return err
	}
	r.disps = append(r.disps, d)
	r.tcoll.Add(d)

	var takeOrder triggers.Endpoint
	if p, ok := r.pools[b.Namespace+"/take-order"]; ok {
		takeOrder = p
	}
	r.board = board.New(board.Deps{
		Publisher: r.store,
		Broker:    ref,
		TakeOrder: takeOrder,
		Status:    func() any { return r.Status() },
		Kill: func(service string) (string, error) {
			p, ok := r.pools[b.Namespace+"/"+service]
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
	for _, pattern := range board.Routes() {
		var h http.Handler = r.board
		if r.opts.IngressToken != "" && strings.HasPrefix(pattern, http.MethodPost+" ") {
			// Placing an order, killing an instance and the feed write
			// or act: with a token they need it, like the ingress. The
			// page and its event stream only read.
			h = broker.RequireBearer(r.opts.IngressToken, h)
		}
		mux.Handle(pattern, h)
	}
	return nil
}

// bearer adds the ingress token to every request it carries.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(req)
}

// BoardURL is the address of the web board.
func (r *Runner) BoardURL() string { return r.IngressURL() + board.PagePath }

// sinkBroker names the Broker a function's K_SINK points at: "default" in
// the function's namespace when there is one, else the first Broker.
func (r *Runner) sinkBroker(ns string) string {
	if b := r.set.Broker(ns, "default"); b != nil {
		return b.Namespace + "/" + b.Name
	}
	b := r.set.Brokers[0]
	return b.Namespace + "/" + b.Name
}
