package triggers

import (
	"context"
	"net/http"
	"testing"
)

// FuzzParseReply feeds fuzzed subscriber responses to the reply parser: it
// must not panic, and any reply it returns must be a valid CloudEvent.
func FuzzParseReply(f *testing.F) {
	f.Add("application/cloudevents+json", "", "", "", `{"specversion":"1.0","id":"1","source":"/s","type":"t"}`)
	f.Add("application/json", "1.0", "1", "/s", `{"a":1}`)
	f.Add("text/plain", "", "", "", "thanks")
	f.Add("", "", "", "", "")
	f.Add("application/cloudevents+json", "", "", "", `{"specversion":"1.0","id":`)
	f.Fuzz(func(t *testing.T, contentType, specversion, id, source, body string) {
		h := http.Header{}
		set := func(k, v string) {
			if v != "" {
				h.Set(k, v)
			}
		}
		set("Content-Type", contentType)
		set("Ce-Specversion", specversion)
		set("Ce-Id", id)
		set("Ce-Source", source)
		set("Ce-Type", "com.example.reply")
		ev, err := parseReply(context.Background(), h, []byte(body))
		if err != nil {
			return
		}
		if ev != nil {
			if verr := ev.Validate(); verr != nil {
				t.Fatalf("parseReply returned an invalid event: %v", verr)
			}
		}
	})
}
