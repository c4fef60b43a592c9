package coffee

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
)

// Namespaces of the name-based (v5) UUIDs. They must never change: ids are
// derived from them so that redelivered events map to the same ids.
const (
	orderNamespace = "c01268ea-c6a8-42d9-8c92-8fa1273d239c"
	replyNamespace = "f85171c4-ac12-40f4-8423-649b7ef14765"
)

// OrderID derives the order id from the order.placed event. The same event
// (same source and id) always yields the same order id.
func OrderID(placed cloudevents.Event) string {
	name := placed.Source() + "\x00" + placed.ID()
	return uuid.NewSHA1(uuid.MustParse(orderNamespace), []byte(name)).String()
}

// ReplyID derives the id of the reply of type replyType to the event
// identified by source and id. A redelivered input yields the same reply id,
// which lets the broker deduplicate replies.
func ReplyID(source, id, replyType string) string {
	name := source + "\x00" + id + "\x00" + replyType
	return uuid.NewSHA1(uuid.MustParse(replyNamespace), []byte(name)).String()
}

// Source returns the CloudEvent source used by the named function.
func Source(function string) string {
	return "/koffeeshop/" + function
}

// NewReply builds the reply to in. It depends only on its arguments, so a
// redelivered input produces an identical reply.
func NewReply(in cloudevents.Event, function, replyType, orderID string, data any) (*cloudevents.Event, error) {
	out := cloudevents.NewEvent()
	out.SetID(ReplyID(in.Source(), in.ID(), replyType))
	out.SetSource(Source(function))
	out.SetType(replyType)
	out.SetSubject(orderID)
	if err := out.SetData(cloudevents.ApplicationJSON, data); err != nil {
		return nil, fmt.Errorf("encode %s data: %w", replyType, err)
	}
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("build %s reply: %w", replyType, err)
	}
	return &out, nil
}

// Decode unmarshals the JSON data of e into v. It fails when the event has
// no data, declares a non-JSON content type, or carries malformed JSON.
func Decode(e cloudevents.Event, v any) error {
	if ct := e.DataContentType(); ct != "" && !isJSON(ct) {
		return fmt.Errorf("unsupported datacontenttype %q", ct)
	}
	data := e.Data()
	if len(data) == 0 {
		return errors.New("event has no data")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s data: %w", e.Type(), err)
	}
	return nil
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return mt == "application/json" || mt == "text/json" || strings.HasSuffix(mt, "+json")
}
