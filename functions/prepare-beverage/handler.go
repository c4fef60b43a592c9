package main

import (
	"context"
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

const functionName = "prepare-beverage"

// barista brews accepted orders.
type barista struct {
	brewTime time.Duration
	// progress, when set, is told that brewing started.
	progress func(ctx context.Context, e cloudevents.Event) error
}

// handle brews the beverage of an accepted order and replies that it is
// ready, signed by the instance that brewed it.
func (b barista) handle(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	if e.Type() != coffee.TypeOrderAccepted {
		return nil, serve.BadRequest("unexpected event type %q, want %q", e.Type(), coffee.TypeOrderAccepted)
	}
	var order coffee.Accepted
	if err := coffee.Decode(e, &order); err != nil {
		return nil, serve.BadRequest("invalid accepted order: %w", err)
	}
	if order.OrderID == "" || order.Customer == "" || order.Beverage == "" {
		return nil, serve.BadRequest("accepted order needs orderId, customer and beverage")
	}

	name := serve.Instance(ctx)
	if b.progress != nil {
		// Best effort: a lost progress event only hides a step on the board.
		started, err := coffee.NewReply(e, functionName, coffee.TypeBeveragePreparing, order.OrderID, coffee.Ready{
			OrderID: order.OrderID, Customer: order.Customer, Beverage: order.Beverage, Barista: name,
		})
		if err == nil {
			err = b.progress(ctx, *started)
		}
		if err != nil {
			serve.Logger(ctx).Warn("progress event not sent", "orderId", order.OrderID, "err", err)
		}
	}

	if err := brew(ctx, b.brewTime); err != nil {
		return nil, fmt.Errorf("brew %s for order %s: %w", order.Beverage, order.OrderID, err)
	}

	reply, err := coffee.NewReply(e, functionName, coffee.TypeBeverageReady, order.OrderID, coffee.Ready{
		OrderID:  order.OrderID,
		Customer: order.Customer,
		Beverage: order.Beverage,
		Barista:  name,
	})
	if err != nil {
		return nil, fmt.Errorf("beverage ready for order %s: %w", order.OrderID, err)
	}
	serve.Logger(ctx).Info("beverage ready",
		"orderId", order.OrderID, "customer", order.Customer, "beverage", order.Beverage, "barista", name)
	return reply, nil
}

// brew waits for d, giving up when ctx is done.
func brew(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
