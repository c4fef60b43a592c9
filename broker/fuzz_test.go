package broker_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/koffeeshop/koffeeshop/broker"
)

// FuzzIngress sends fuzzed requests to the ingress over a real JetStream:
// the answer is always one of the contract's statuses, and a 202 means a
// valid event is in the stream.
func FuzzIngress(f *testing.F) {
	env := startBroker(f)
	f.Add("POST", "/default/default", "application/json", "1.0", "1", "/s", "t", `{"a":1}`)
	f.Add("POST", "/default/default", "application/cloudevents+json", "", "", "", "", `{"specversion":"1.0","id":"2","source":"/s","type":"t","data":{"x":1}}`)
	f.Add("POST", "/default/default", "application/cloudevents+json", "", "", "", "", `{"specversion":"1.0","id":`)
	f.Add("GET", "/default/default", "", "", "", "", "", "")
	f.Add("POST", "/x/y/z", "application/json", "1.0", "1", "/s", "t", "")
	f.Add("POST", "/default/default", "application/cloudevents-batch+json", "", "", "", "", "[]")
	f.Add("POST", "/default/default", "text/plain", "0.3", "3", "s", "t", "\x00\xff")
	allowed := map[int]bool{202: true, 400: true, 404: true, 405: true, 413: true}
	client := &http.Client{}
	f.Fuzz(func(t *testing.T, method, path, contentType, specversion, id, source, typ, body string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?#% \t\r\n") {
			return
		}
		req, err := http.NewRequest(method, env.url+path, strings.NewReader(body))
		if err != nil {
			return
		}
		for k, v := range map[string]string{"Content-Type": contentType, "Ce-Specversion": specversion, "Ce-Id": id, "Ce-Source": source, "Ce-Type": typ} {
			if v != "" {
				req.Header[k] = []string{v}
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			return // net/http refused to send it (invalid method or header)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !allowed[resp.StatusCode] {
			t.Fatalf("%s %s: status %d is not in the ingress contract", method, path, resp.StatusCode)
		}
		if resp.StatusCode == http.StatusAccepted {
			msg, err := env.stream.GetLastMsgForSubject(context.Background(), env.ref.Subject())
			if err != nil {
				t.Fatal(err)
			}
			ev, err := broker.Decode(msg.Header, msg.Data)
			if err != nil {
				t.Fatalf("202 but the stored event does not decode: %v", err)
			}
			if err := ev.Validate(); err != nil {
				t.Fatalf("202 but the stored event is invalid: %v", err)
			}
		}
	})
}
