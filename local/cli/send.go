package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/google/uuid"

	"github.com/koffeeshop/koffeeshop/broker/ceheader"
)

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func send(ctx context.Context, e *env, args []string) int {
	f := newFlags(e, "send", "--type TYPE [flags] | --file EVENT.json",
		"Sends one CloudEvent to a Broker, in binary mode from the flags, or in structured\nmode from a file holding the event in the JSON format, and prints the answer.")
	var (
		typ, source, id, data, contentType, subject, file string
		exts                                              listFlag
		timeout                                           time.Duration
	)
	f.StringVar(&typ, "type", "", "the event's type (required without --file)")
	f.StringVar(&source, "source", "/koffeeshop-cli", "the event's source")
	f.StringVar(&id, "id", "", "the event's id (default: a new UUID)")
	f.StringVar(&data, "data", "", "the event's data, or @FILE to read it from FILE")
	f.StringVar(&contentType, "content-type", cloudevents.ApplicationJSON, "the data's media type")
	f.StringVar(&subject, "subject", "", "the event's subject")
	f.Var(&exts, "extension", "an extension attribute, NAME=VALUE (repeatable)")
	f.StringVar(&file, "file", "", "send this structured-mode event (JSON format) instead")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the answer")
	if code, ok := f.parse(e, args); !ok {
		return code
	}
	var req *http.Request
	var err error
	switch {
	case file != "" && (typ != "" || data != "" || len(exts) > 0):
		return usage(e, f, "--file sends the event in the file: no --type, --data or --extension with it")
	case file != "":
		body, rerr := os.ReadFile(file)
		if rerr != nil {
			return usage(e, f, "%v", rerr)
		}
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, f.brokerURL(), bytes.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", cloudevents.ApplicationCloudEventsJSON)
		}
	case typ == "":
		return usage(e, f, "--type is required (or --file)")
	default:
		ev, code := buildEvent(e, f, typ, source, id, data, contentType, subject, exts)
		if code != OK {
			return code
		}
		req, err = binaryRequest(ctx, f.brokerURL(), &ev)
	}
	if err != nil {
		return fail(e, "send", "%v", err)
	}
	status, msg, err := post(req, f.token, timeout)
	if err != nil {
		return fail(e, "send", "%v", err)
	}
	if status/100 != 2 {
		return fail(e, "send", "%d %s: %s", status, http.StatusText(status), msg)
	}
	fmt.Fprintf(e.stdout, "%d %s: the event is stored\n", status, http.StatusText(status))
	return OK
}

// buildEvent makes the event the flags describe, checked by sdk-go.
func buildEvent(e *env, f *flags, typ, source, id, data, contentType, subject string, exts []string) (cloudevents.Event, int) {
	ev := cloudevents.NewEvent()
	if id == "" {
		id = uuid.NewString()
	}
	ev.SetID(id)
	ev.SetType(typ)
	ev.SetSource(source)
	ev.SetTime(time.Now())
	if subject != "" {
		ev.SetSubject(subject)
	}
	for _, x := range exts {
		k, v, ok := strings.Cut(x, "=")
		if !ok || k == "" {
			return ev, usage(e, f, "--extension %q: want NAME=VALUE", x)
		}
		ev.SetExtension(k, v)
	}
	if data != "" {
		body := []byte(data)
		if name, ok := strings.CutPrefix(data, "@"); ok {
			var err error
			if body, err = os.ReadFile(name); err != nil {
				return ev, usage(e, f, "--data: %v", err)
			}
		}
		if err := ev.SetData(contentType, body); err != nil {
			return ev, usage(e, f, "--data: %v", err)
		}
	}
	if err := ev.Validate(); err != nil {
		return ev, usage(e, f, "not a valid CloudEvent: %v", err)
	}
	return ev, OK
}

// binaryRequest is the POST of ev in binary mode, written by sdk-go.
func binaryRequest(ctx context.Context, url string, ev *cloudevents.Event) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return nil, err
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(ev), req); err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	ceheader.EncodeHTTP(req.Header)
	return req, nil
}

// post sends req with the token and returns the status and the body's
// first line: the ingress's message.
func post(req *http.Request, token string, timeout time.Duration) (int, string, error) {
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("POST %s: %w", req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, strings.TrimSpace(string(body)), nil
}
