package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// deadLetterPath is where the Broker's deadLetterSink (a ref to this
// Service with uri /dead-letter) delivers the events whose delivery failed
// for good, from every Trigger without a delivery of its own.
const deadLetterPath = "/dead-letter"

// The extensions Knative adds to a dead-lettered event.
const (
	extErrorDest = "knativeerrordest" // the subscriber that failed
	extErrorCode = "knativeerrorcode" // its last HTTP status, 500 for a transport error
	extErrorData = "knativeerrordata" // its response body in base64, cut to maxErrorData
)

// maxErrorData is how many base64 characters of the response body Knative
// keeps in knativeerrordata (its KnativeErrorDataExtensionMaxLength).
const maxErrorData = 1024

// deadLetters turns each dead letter into an order.failed event, so that a
// refused order, accepted with a 202 by the Broker, still reaches whoever
// placed it instead of vanishing.
type deadLetters struct {
	// send delivers an event to K_SINK; nil when the function has none.
	send func(ctx context.Context, e cloudevents.Event) error
}

// handle sends order.failed for a dead letter and answers with no reply:
// the dispatcher does not publish a dead-letter sink's reply, so the event
// goes to K_SINK itself. Its id derives from the dead letter's source and
// id, so a redelivered dead letter is stored once by the Broker.
func (d deadLetters) handle(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	ext := e.Extensions()
	if ext[extErrorDest] == nil && ext[extErrorCode] == nil {
		return nil, serve.BadRequest("not a dead letter: no %s or %s extension", extErrorDest, extErrorCode)
	}
	failed := describe(e)
	log := serve.Logger(ctx).With("orderId", failed.OrderID, "code", failed.Code,
		"destination", failed.Destination, "reason", failed.Reason)

	if e.Type() == coffee.TypeOrderFailed {
		// The news of a failure could not be delivered: telling it again
		// would only feed the same failure back in.
		log.Error("order.failed was dead-lettered; not sent again")
		return nil, nil
	}
	if d.send == nil {
		// Retried: the dead letter waits in the Broker until a sink exists.
		return nil, cehttp.NewResult(http.StatusServiceUnavailable, "no %s to send %s to", serve.EnvSink, coffee.TypeOrderFailed)
	}
	out, err := coffee.NewReply(e, functionName, coffee.TypeOrderFailed, failed.OrderID, failed)
	if err != nil {
		return nil, fmt.Errorf("order %s failed: %w", failed.OrderID, err)
	}
	if err := d.send(ctx, *out); err != nil {
		// A 5xx makes the dispatcher deliver the dead letter again.
		return nil, cehttp.NewResult(http.StatusBadGateway, "order %s failed, and telling it failed too: %w", failed.OrderID, err)
	}
	log.Warn("order failed", "deadLetterType", e.Type(), "deadLetterId", e.ID())
	return nil, nil
}

// describe reads what failed from a dead letter: the order it belongs to,
// as far as its data tells, and what the subscriber answered.
func describe(e cloudevents.Event) coffee.Failed {
	ext := e.Extensions()
	f := coffee.Failed{Destination: extString(ext[extErrorDest])}
	if code, err := types.ToInteger(ext[extErrorCode]); err == nil {
		f.Code = int(code)
	}
	raw := extString(ext[extErrorData])
	f.Reason = strings.TrimSpace(errorData(raw))
	switch {
	case f.Reason == "" && f.Code != 0:
		f.Reason = fmt.Sprintf("subscriber answered %d", f.Code)
	case f.Reason == "":
		f.Reason = "delivery failed"
	case len(raw) >= maxErrorData:
		f.Reason += "…" // Knative keeps no more: the body was likely cut
	}

	// Any payload of the shop names the order; data that does not decode
	// (the very reason an order is refused) leaves the fields empty.
	var p struct {
		OrderID  string `json:"orderId"`
		Customer string `json:"customer"`
		Beverage string `json:"beverage"`
	}
	if err := coffee.Decode(e, &p); err == nil {
		f.Customer, f.Beverage = p.Customer, p.Beverage
	}
	switch {
	case e.Type() == coffee.TypeOrderPlaced:
		// The id take-order would have given it, which the board knows.
		f.OrderID = coffee.OrderID(e)
	case p.OrderID != "":
		f.OrderID = p.OrderID
	default:
		// Replies carry the order id as their subject too.
		f.OrderID = e.Subject()
	}
	return f
}

// extString renders an extension value, "" when absent.
func extString(v any) string {
	if v == nil {
		return ""
	}
	if s, err := types.Format(v); err == nil {
		return s
	}
	return fmt.Sprint(v)
}

// errorData decodes knativeerrordata leniently, since Knative cuts the
// base64 text wherever the limit falls: a dangling character, missing
// padding, or a UTF-8 sequence split at the end are dropped, and what can
// be decoded is kept.
func errorData(s string) string {
	s = strings.TrimRight(strings.TrimSpace(s), "=")
	if len(s)%4 == 1 {
		s = s[:len(s)-1] // a single character encodes no byte
	}
	var best []byte
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		buf := make([]byte, enc.DecodedLen(len(s)))
		n, err := enc.Decode(buf, []byte(s))
		if err == nil {
			best = buf[:n]
			break
		}
		if n > len(best) {
			best = buf[:n]
		}
	}
	return strings.ToValidUTF8(string(best), "")
}
