package serve_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// TestRoutesServeTheirOwnHandler: an event posted to a route's path reaches
// the route's handler, and every other path still reaches the main one.
func TestRoutesServeTheirOwnHandler(t *testing.T) {
	var seen []string
	dead := func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
		serve.Logger(ctx).Info("dead letter")
		seen = append(seen, e.ID())
		if e.Type() == "refuse" {
			return nil, serve.BadRequest("not a dead letter: %s", e.ID())
		}
		return nil, nil
	}
	r := start(t, serve.Config{Instance: "inst-r"}, echo, serve.Route{Path: "/dead-letter", Handler: dead})

	resp, body := testkit.PostBinary(t, r.url+"/dead-letter", testkit.Event("dl-1", "/test/client", "test.request", `{}`))
	if resp.StatusCode != http.StatusOK || body != "" || resp.Header.Get("Ce-Type") != "" {
		t.Errorf("route: status %d, body %q, Ce-Type %q; want 200 without a body", resp.StatusCode, body, resp.Header.Get("Ce-Type"))
	}
	if len(seen) != 1 || seen[0] != "dl-1" {
		t.Fatalf("route handler saw %v", seen)
	}

	for _, path := range []string{"/", "/dead-letter/more", "/other"} {
		resp, body := testkit.PostBinary(t, r.url+path, testkit.Event("main-1", "/test/client", "test.request", `{"n":2}`))
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Ce-Type") != "test.reply" {
			t.Errorf("POST %s: status %d, Ce-Type %q, body %q; want the main handler's reply", path, resp.StatusCode, resp.Header.Get("Ce-Type"), body)
		}
	}
	if len(seen) != 1 {
		t.Errorf("route handler also got %v", seen[1:])
	}

	// A route is an ordinary event endpoint: its errors map to statuses,
	// its logs carry the event.
	resp, body = testkit.PostBinary(t, r.url+"/dead-letter", testkit.Event("dl-2", "/test/client", "refuse", `{}`))
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "not a dead letter: dl-2") {
		t.Errorf("refusal: status %d, body %q", resp.StatusCode, body)
	}
	if logs := r.logs.String(); !strings.Contains(logs, `msg="dead letter"`) || !strings.Contains(logs, "eventId=dl-1") {
		t.Errorf("route handler logs lack the event:\n%s", logs)
	}
}

// TestErrorBodyIsTheMessage: the body of a refusal is the handler's message
// alone, without the status code the status line already carries, so that
// a dead-letter sink can quote it as the reason.
func TestErrorBodyIsTheMessage(t *testing.T) {
	h := func(context.Context, cloudevents.Event) (*cloudevents.Event, error) {
		return nil, serve.BadRequest("invalid order: %s", "no data")
	}
	r := start(t, serve.Config{}, h)
	resp, body := testkit.PostBinary(t, r.url+"/", testkit.Event("e-1", "/test/client", "test.request", `{}`))
	if resp.StatusCode != http.StatusBadRequest || strings.TrimSpace(body) != "invalid order: no data" {
		t.Errorf("status %d, body %q; want 400 with the message alone", resp.StatusCode, body)
	}
	if got := serve.Message(serve.BadRequest("x %d", 1)); got != "x 1" {
		t.Errorf("Message(BadRequest) = %q", got)
	}
	if got := serve.Message(nil); got != "" {
		t.Errorf("Message(nil) = %q", got)
	}
}

func TestNewRejectsBadRoutes(t *testing.T) {
	ok := func(context.Context, cloudevents.Event) (*cloudevents.Event, error) { return nil, nil }
	for name, routes := range map[string][]serve.Route{
		"nil handler":    {{Path: "/dead-letter"}},
		"root":           {{Path: "/", Handler: ok}},
		"relative":       {{Path: "dead-letter", Handler: ok}},
		"trailing slash": {{Path: "/dead-letter/", Handler: ok}},
		"wildcard":       {{Path: "/{x}", Handler: ok}},
		"health":         {{Path: serve.ReadinessPath, Handler: ok}},
		"twice":          {{Path: "/a", Handler: ok}, {Path: "/a", Handler: ok}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := serve.New(serve.Config{}, ok, routes...); err == nil {
				t.Fatalf("New accepted %+v", routes)
			}
		})
	}
}

// TestDescribeAnswersGET: a Describe route answers GET / with its value as
// JSON, while POST / still takes events; Describe twice is refused.
func TestDescribeAnswersGET(t *testing.T) {
	r := start(t, serve.Config{Instance: "inst-d"}, echo, serve.Describe(map[string][]string{"menu": {"latte"}}))
	code, body := get(t, r.url+"/")
	if code != http.StatusOK || strings.TrimSpace(body) != "{\n  \"menu\": [\n    \"latte\"\n  ]\n}" {
		t.Fatalf("GET / = %d %q", code, body)
	}
	if resp, _ := testkit.PostBinary(t, r.url+"/", testkit.Event("evt-d", "/test/client", "test.request", `{}`)); resp.StatusCode != http.StatusOK {
		t.Fatalf("POST / = %d", resp.StatusCode)
	}
	if _, err := serve.New(serve.Config{}, echo, serve.Describe(1), serve.Describe(2)); err == nil {
		t.Fatal("Describe twice was taken")
	}
}
