package board

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/koffeeshop/koffeeshop/functions/serve"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// maxReplyBytes bounds what the board reads of take-order's answer.
const maxReplyBytes = 1 << 20

// takeOrder calls the take-order function synchronously over CloudEvents
// HTTP, as any client of it would, rather than through the Broker.
type takeOrder struct {
	endpoint triggers.Endpoint // nil without a take-order Service
	http     *cehttp.Protocol
}

func newTakeOrder(endpoint triggers.Endpoint) (*takeOrder, error) {
	p, err := cehttp.New(cehttp.WithClient(http.Client{Timeout: 30 * time.Second}))
	if err != nil {
		return nil, fmt.Errorf("board: take-order client: %w", err)
	}
	return &takeOrder{endpoint: endpoint, http: p}, nil
}

// Request sends ev to an instance of take-order, in ctx's trace, and
// returns its reply event and HTTP status. It uses sdk-go's HTTP protocol
// rather than its client, whose Request drops the body of a refusal (which
// tells why) and reports a refusal without an event in it as an ACK.
func (t *takeOrder) Request(ctx context.Context, ev cloudevents.Event) (*cloudevents.Event, int, error) {
	if t.endpoint == nil {
		return nil, 0, errors.New("no take-order Service in config")
	}
	u, release, err := t.endpoint.Acquire(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("take-order: %w", err)
	}
	defer release()
	ctx = serve.WithTraceHeaders(cloudevents.ContextWithTarget(ctx, u.String()))
	msg, res := t.http.Request(ctx, binding.ToMessage(&ev))
	var answer *cehttp.Result
	if !errors.As(res, &answer) {
		return nil, 0, fmt.Errorf("take-order: %w", res) // no answer came
	}
	m, ok := msg.(*cehttp.Message)
	if !ok {
		return nil, answer.StatusCode, fmt.Errorf("take-order answered %d with no message", answer.StatusCode)
	}
	defer m.Finish(nil)
	m.BodyReader = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(m.BodyReader, maxReplyBytes), m.BodyReader}
	if !protocol.IsACK(res) {
		body, _ := io.ReadAll(m.BodyReader)
		return nil, answer.StatusCode, fmt.Errorf("take-order answered %d: %s", answer.StatusCode, strings.TrimSpace(string(body)))
	}
	reply, err := binding.ToEvent(ctx, m)
	if err != nil {
		return nil, answer.StatusCode, fmt.Errorf("take-order reply: %w", err)
	}
	return reply, answer.StatusCode, nil
}
