package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// newSink returns a sender of events to K_SINK, the address Knative's
// SinkBinding (or the local runner) gives a function for events that are
// not replies.
func newSink(raw string) (func(context.Context, cloudevents.Event) error, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("K_SINK %q is not an http(s) URL", raw)
	}
	// Keep connections to the sink for every concurrent brew.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		Proxy: nil, MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second,
	}}
	return func(ctx context.Context, e cloudevents.Event) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
		if err != nil {
			return err
		}
		if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
			return fmt.Errorf("encode %s: %w", e.Type(), err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("send %s to sink: %w", e.Type(), err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("send %s to sink: status %d", e.Type(), resp.StatusCode)
		}
		return nil
	}, nil
}
