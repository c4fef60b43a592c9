package testkit

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// Event is a CloudEvent with the given id, source and type, and data as
// its application/json data; "" for no data and no content type.
func Event(id, source, typ, data string) cloudevents.Event {
	ev := cloudevents.NewEvent()
	ev.SetID(id)
	ev.SetSource(source)
	ev.SetType(typ)
	if data != "" {
		_ = ev.SetData(cloudevents.ApplicationJSON, []byte(data))
	}
	return ev
}

// PostBinary posts ev to url in binary mode (attributes in ce- headers,
// data as the body) and returns the answer with its body read.
func PostBinary(tb testing.TB, url string, ev cloudevents.Event) (*http.Response, string) {
	tb.Helper()
	return Do(tb, BinaryRequest(tb, url, ev))
}

// BinaryRequest is the request PostBinary sends, for a test that adds to
// it (a token, a trace context) before it sends it with Do.
func BinaryRequest(tb testing.TB, url string, ev cloudevents.Event) *http.Request {
	tb.Helper()
	return eventRequest(tb, binding.WithForceBinary(context.Background()), url, ev)
}

// PostStructured posts ev to url in structured mode (the whole event as
// application/cloudevents+json) and returns the answer with its body
// read.
func PostStructured(tb testing.TB, url string, ev cloudevents.Event) (*http.Response, string) {
	tb.Helper()
	return Do(tb, eventRequest(tb, binding.WithForceStructured(context.Background()), url, ev))
}

func eventRequest(tb testing.TB, ctx context.Context, url string, ev cloudevents.Event) *http.Request {
	tb.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&ev), req); err != nil {
		tb.Fatalf("encode %s: %v", ev.ID(), err)
	}
	return req
}

// Post posts body to url with the given headers, as they are: for a
// request that is not a well-formed event.
func Post(tb testing.TB, url string, header map[string]string, body string) (*http.Response, string) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return Do(tb, req)
}

// Do sends req with the default client and reads the whole answer: the
// body comes back as a string, and resp.Body holds it again, so that the
// caller has nothing to close.
func Do(tb testing.TB, req *http.Request) (*http.Response, string) {
	tb.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		tb.Fatalf("%s %s: read the answer: %v", req.Method, req.URL, err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, string(body)
}

// GetOK asks url with GET and returns nil when it answers 200 OK, else
// what it answered instead: a readiness probe for Eventually. A server
// that does not answer in five seconds is an error, so that the wait's
// deadline holds.
func GetOK(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
