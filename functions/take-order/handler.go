package main

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

const functionName = "take-order"

// orderShape is the data of an order.placed event, as the refusal of an
// undecodable one shows it.
const orderShape = `{"customer": "...", "beverage": "..."}`

// handle validates a placed order against the menu and accepts or rejects it.
func handle(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	if e.Type() != coffee.TypeOrderPlaced {
		return nil, serve.BadRequest("unexpected event type %q, want %q", e.Type(), coffee.TypeOrderPlaced)
	}
	var order coffee.Order
	if err := coffee.Decode(e, &order); err != nil {
		// Tell the sender what an order looks like: this text is all a
		// dead-lettered order carries back to whoever placed it.
		return nil, serve.BadRequest("invalid order: %w; an order is %s as %s", err, orderShape, cloudevents.ApplicationJSON)
	}

	orderID := coffee.OrderID(e)
	customer := strings.TrimSpace(order.Customer)
	log := serve.Logger(ctx).With("orderId", orderID, "customer", customer, "beverage", order.Beverage)

	if reason := check(customer, order.Beverage); reason != "" {
		reply, err := coffee.NewReply(e, functionName, coffee.TypeOrderRejected, orderID, coffee.Rejected{
			OrderID:  orderID,
			Customer: customer,
			Beverage: order.Beverage,
			Reason:   reason,
		})
		if err != nil {
			return nil, fmt.Errorf("reject order %s: %w", orderID, err)
		}
		log.Info("order rejected", "reason", reason)
		return reply, nil
	}

	beverage, _ := coffee.LookupBeverage(order.Beverage)
	reply, err := coffee.NewReply(e, functionName, coffee.TypeOrderAccepted, orderID, coffee.Accepted{
		OrderID:  orderID,
		Customer: customer,
		Beverage: beverage,
	})
	if err != nil {
		return nil, fmt.Errorf("accept order %s: %w", orderID, err)
	}
	log.Info("order accepted")
	return reply, nil
}

// check returns why an order cannot be taken, or "" when it can.
func check(customer, beverage string) string {
	if customer == "" {
		return "customer is required"
	}
	if n := utf8.RuneCountInString(customer); n > coffee.MaxCustomerLen {
		return fmt.Sprintf("customer name is %d characters long: at most %d", n, coffee.MaxCustomerLen)
	}
	if strings.TrimSpace(beverage) == "" {
		return "beverage is required"
	}
	if _, ok := coffee.LookupBeverage(beverage); !ok {
		return fmt.Sprintf("unknown beverage %q: the menu is %s", beverage, strings.Join(coffee.Menu(), ", "))
	}
	return ""
}
