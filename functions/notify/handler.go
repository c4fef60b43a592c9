package main

import (
	"context"
	"fmt"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

const functionName = "notify"

// handle turns a ready beverage into a notification for its customer.
func handle(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	if e.Type() != coffee.TypeBeverageReady {
		return nil, serve.BadRequest("unexpected event type %q, want %q", e.Type(), coffee.TypeBeverageReady)
	}
	var ready coffee.Ready
	if err := coffee.Decode(e, &ready); err != nil {
		return nil, serve.BadRequest("invalid ready beverage: %w", err)
	}
	if ready.OrderID == "" || ready.Customer == "" || ready.Beverage == "" {
		return nil, serve.BadRequest("ready beverage needs orderId, customer and beverage")
	}

	msg := message(ready)
	reply, err := coffee.NewReply(e, functionName, coffee.TypeCustomerNotified, ready.OrderID, coffee.Notified{
		OrderID:  ready.OrderID,
		Customer: ready.Customer,
		Beverage: ready.Beverage,
		Barista:  ready.Barista,
		Message:  msg,
	})
	if err != nil {
		return nil, fmt.Errorf("notify order %s: %w", ready.OrderID, err)
	}
	serve.Logger(ctx).Info("customer notified",
		"orderId", ready.OrderID, "customer", ready.Customer, "beverage", ready.Beverage, "barista", ready.Barista)
	return reply, nil
}

// message is the text shown to the customer.
func message(r coffee.Ready) string {
	if r.Barista == "" {
		return fmt.Sprintf("%s, your %s is ready", r.Customer, r.Beverage)
	}
	return fmt.Sprintf("%s, your %s is ready (made by %s)", r.Customer, r.Beverage, r.Barista)
}
