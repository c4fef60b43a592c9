package triggers_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	kbroker "knative.dev/eventing/pkg/broker"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/ceheader"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// The promise of a 202: whatever the ingress accepts reaches a catch-all
// Trigger with the same data bytes and the same attributes, plus only the
// ones Knative adds, in every combination of binary and structured mode in
// and out.

// input is one event as a sender means it.
type input struct {
	id, source, typ string
	subject         string // "" for none
	contentType     string // "" for none
	time            string // RFC 3339, "" for none
	data            []byte
	ext             map[string]string
}

// outModes are the Triggers of the rig, by spec.delivery.format.
var outModes = []string{"binary", "json"}

// received is what a subscriber got.
type received struct {
	header http.Header
	body   []byte
	event  cloudevents.Event
}

// recorder is a catch-all subscriber that keeps each event by id.
type recorder struct {
	*httptest.Server
	mu   sync.Mutex
	got  map[string]received
	wake chan struct{}
}

func newRecorder(t testing.TB) *recorder {
	r := &recorder{got: map[string]received{}, wake: make(chan struct{}, 1)}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		raw := req.Header.Clone()
		h := req.Header.Clone()
		if err := ceheader.DecodeHTTP(h); err != nil {
			http.Error(w, "bad percent-encoding: "+err.Error(), http.StatusUnprocessableEntity)
			return
		}
		ev, err := binding.ToEvent(req.Context(), cehttp.NewMessage(h, io.NopCloser(bytes.NewReader(body))))
		if err != nil {
			http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusUnprocessableEntity)
			return
		}
		r.mu.Lock()
		r.got[ev.ID()] = received{header: raw, body: body, event: *ev}
		r.mu.Unlock()
		select {
		case r.wake <- struct{}{}:
		default:
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.Close)
	return r
}

// await returns what arrived for id, waiting up to timeout.
func (r *recorder) await(id string, timeout time.Duration) (received, bool) {
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		got, ok := r.got[id]
		r.mu.Unlock()
		if ok {
			return got, true
		}
		select {
		case <-r.wake:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			return received{}, false
		}
	}
}

// rig is an ingress and one catch-all Trigger per out mode on one Broker.
type rig struct {
	h       *harness
	ingress string
	subs    map[string]*recorder
}

var rigSeq atomic.Int64

func newRig(t testing.TB) *rig {
	h := newHarness(t)
	log := slog.New(slog.DiscardHandler)
	in := httptest.NewServer(broker.NewIngress(h.store, broker.NewBrokerSet(h.ref), log, broker.IngressOptions{}))
	t.Cleanup(in.Close)
	r := &rig{h: h, ingress: in.URL + "/" + h.ref.Namespace + "/" + h.ref.Name, subs: map[string]*recorder{}}
	for _, mode := range outModes {
		sub := newRecorder(t)
		tr, br := h.manifests("", fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: all-%s-%d}
spec:
  broker: '{{broker}}'
  subscriber: {uri: '%s'}
  delivery: {format: %s}
`, mode, rigSeq.Add(1), sub.URL, mode))
		cfg := triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL), Concurrency: 8}
		h.run(cfg, nil)
		r.subs[mode] = sub
	}
	return r
}

// request builds the HTTP request of in, in binary or structured mode, as
// a conforming sender writes it.
func (in input) request(url string, structured bool) (*http.Request, error) {
	if !structured {
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(in.data))
		if err != nil {
			return nil, err
		}
		set := func(k, v string) { req.Header["Ce-"+k] = []string{ceheader.Encode(v)} }
		set("Specversion", "1.0")
		set("Id", in.id)
		set("Source", in.source)
		set("Type", in.typ)
		if in.subject != "" {
			set("Subject", in.subject)
		}
		if in.time != "" {
			set("Time", in.time)
		}
		for k, v := range in.ext {
			set(k, v)
		}
		if in.contentType != "" {
			req.Header.Set("Content-Type", in.contentType)
		}
		return req, nil
	}
	doc := map[string]any{"specversion": "1.0", "id": in.id, "source": in.source, "type": in.typ}
	if in.subject != "" {
		doc["subject"] = in.subject
	}
	if in.time != "" {
		doc["time"] = in.time
	}
	if in.contentType != "" {
		doc["datacontenttype"] = in.contentType
	}
	for k, v := range in.ext {
		doc[k] = v
	}
	var raw []byte // JSON data, spliced in byte for byte
	if len(in.data) > 0 {
		switch {
		case isJSONType(in.contentType) && utf8.Valid(in.data) && json.Valid(in.data) && len(bytes.TrimSpace(in.data)) == len(in.data):
			raw = in.data
		case !isJSONType(in.contentType) && utf8.Valid(in.data):
			doc["data"] = string(in.data)
		default:
			doc["data_base64"] = base64.StdEncoding.EncodeToString(in.data)
		}
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	if raw != nil {
		body = append(append(append(body[:len(body)-1], `,"data":`...), raw...), '}')
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", cloudevents.ApplicationCloudEventsJSON+"; charset=utf-8")
	return req, nil
}

// isJSONType: data that sdk-go reads back as JSON under ct (it compares
// the media type as written, so a sender writes it in lower case).
func isJSONType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	switch strings.TrimSpace(mt) {
	case "", "application/json", "text/json":
		return true
	}
	return false
}

// check compares what a subscriber got with what was sent.
func (in input) check(t *testing.T, mode string, got received) {
	t.Helper()
	ev := got.event
	// sdk-go, which reads every event, trims the space around these.
	trim := strings.TrimSpace
	want := map[string]string{"id": trim(in.id), "source": in.source, "type": trim(in.typ), "subject": trim(in.subject), "datacontenttype": trim(in.contentType)}
	have := map[string]string{"id": ev.ID(), "source": ev.Source(), "type": ev.Type(), "subject": ev.Subject(), "datacontenttype": ev.DataContentType()}
	for k, v := range want {
		if have[k] != v {
			t.Errorf("%s out: %s = %q, want %q", mode, k, have[k], v)
		}
	}
	if in.time != "" {
		sent, _ := time.Parse(time.RFC3339Nano, in.time)
		if !ev.Time().Equal(sent) {
			t.Errorf("%s out: time %s, want %s", mode, ev.Time(), in.time)
		}
	}
	exts := ev.Extensions()
	for k, v := range in.ext {
		if s, _ := exts[k].(string); s != v {
			t.Errorf("%s out: extension %s = %q, want %q", mode, k, exts[k], v)
		}
	}
	for k := range exts {
		if _, sent := in.ext[k]; !sent && k != kbroker.EventArrivalTime {
			t.Errorf("%s out: extension %s = %v was added", mode, k, exts[k])
		}
	}
	if _, ok := exts[kbroker.EventArrivalTime]; !ok {
		t.Errorf("%s out: no %s", mode, kbroker.EventArrivalTime)
	}
	if !bytes.Equal(ev.Data(), in.data) {
		t.Errorf("%s out: data %q, want %q", mode, ev.Data(), in.data)
	}
	for k, vs := range got.header {
		for _, v := range vs {
			if strings.HasPrefix(k, ceheader.Prefix) && (strings.ContainsAny(v, " \"") || !isHeaderSafe(v)) {
				t.Errorf("%s out: header %s = %q is not percent-encoded", mode, k, v)
			}
		}
	}
	if mode == "json" {
		if !utf8.Valid(got.body) || !json.Valid(got.body) {
			t.Errorf("json out: body is not UTF-8 JSON: %q", got.body)
		}
	} else if !bytes.Equal(got.body, in.data) {
		t.Errorf("binary out: body %q, want the data %q", got.body, in.data)
	}
}

// isHeaderSafe: printable ASCII only.
func isHeaderSafe(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] >= 0x7f {
			return false
		}
	}
	return true
}

// deliver sends in, in mode in, and checks both Triggers' deliveries.
func (r *rig) deliver(t *testing.T, in input, structured bool) {
	t.Helper()
	req, err := in.request(r.ingress, structured)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("ingress answered %d %s for %+v", resp.StatusCode, msg, in)
	}
	for _, mode := range outModes {
		got, ok := r.subs[mode].await(strings.TrimSpace(in.id), 10*time.Second)
		if !ok {
			t.Fatalf("%s out: event %q accepted with 202 but never delivered", mode, in.id)
		}
		in.check(t, mode, got)
	}
}

// seeds are the inputs the issue names, plus the shop's own.
func seeds() []input {
	all256 := make([]byte, 256)
	for i := range all256 {
		all256[i] = byte(i)
	}
	long := strings.Repeat("long value with spaces, \"quotes\", 100% and é ", 200)
	return []input{
		{id: "non-utf8", source: "/seeds", typ: "com.example.bytes", contentType: "application/octet-stream", data: []byte{0xff, 0xfe, 0x00, 0x80, 'a'}},
		{id: "invalid-json", source: "/seeds", typ: "com.koffeeshop.order.placed", contentType: "application/json", data: []byte(`{"customer": "a", beverage`)},
		{id: "empty", source: "/seeds", typ: "com.example.empty"},
		{id: "empty-json-type", source: "/seeds", typ: "com.example.empty", contentType: "application/json"},
		{id: "long-extension", source: "/seeds", typ: "com.example.ext", contentType: "text/plain", data: []byte("hi"), ext: map[string]string{"longext": long}},
		{id: "all-256", source: "/seeds", typ: "com.example.bytes", contentType: "application/octet-stream", data: all256},
		{id: "all-256-as-json", source: "/seeds", typ: "com.example.bytes", contentType: "application/json", data: all256},
		{id: "base64-text", source: "/seeds", typ: "com.example.b64", contentType: "text/plain", data: []byte{'o', 'k', 0xc3}},
		{id: "json-string", source: "/seeds", typ: "com.koffeeshop.order.placed", contentType: "application/json", data: []byte(`"latte"`)},
		{id: "order", source: "/koffeeshop/web", typ: "com.koffeeshop.order.placed", contentType: "application/json; charset=utf-8",
			subject: "ada's order", time: "2026-11-24T10:00:00.5Z", data: []byte("{\n  \"customer\": \"Ada\",  \"beverage\": \"latte\"\n}")},
		{id: "percent % \"quoted\" ünïcödé 😀", source: "urn:koffeeshop:seeds", typ: "com.example.text type", subject: "sub ject%20",
			contentType: "text/plain; charset=utf-8", data: []byte("plain text ✓"), ext: map[string]string{"comment": "a \"b\" 100% ç", "empty": ""}},
	}
}

// randomInput makes an input from r: printable Unicode attribute values
// with the characters the binding escapes, and arbitrary data under
// arbitrary content types.
func randomInput(r *rand.Rand, n int) input {
	alphabet := []rune("abcXYZ019 -_.:/%\"'é😀✓\\{}[]=&?#+,;")
	str := func(min, max int) string {
		k := min + r.IntN(max-min+1)
		var b strings.Builder
		for range k {
			b.WriteRune(alphabet[r.IntN(len(alphabet))])
		}
		return b.String()
	}
	types := []string{"", "application/json", "text/plain", "application/octet-stream", "text/plain; charset=utf-8", "application/xml", "text/json"}
	in := input{
		id:          fmt.Sprintf("r%d-%s", n, str(0, 12)),
		source:      []string{"/shop/front", "urn:koffeeshop:test", "https://koffeeshop.example/orders?x=1"}[r.IntN(3)],
		typ:         "com.example." + str(1, 10),
		contentType: types[r.IntN(len(types))],
		ext:         map[string]string{},
	}
	if r.IntN(2) == 0 {
		in.subject = str(1, 20)
	}
	if r.IntN(3) == 0 {
		in.time = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(int64(365 * 24 * time.Hour)))).Format(time.RFC3339Nano)
	}
	for i := range r.IntN(3) {
		in.ext[fmt.Sprintf("ext%d", i)] = str(0, 40)
	}
	switch r.IntN(4) {
	case 0: // none
	case 1:
		in.data = []byte(fmt.Sprintf(`{"n": %d, "s": %q}`, n, str(0, 20)))
	case 2:
		in.data = []byte(str(1, 60))
	default:
		in.data = make([]byte, 1+r.IntN(300))
		for i := range in.data {
			in.data[i] = byte(r.IntN(256))
		}
	}
	return in
}

// TestAcceptedEventsArriveAsSent is the property test: the seeds and 60
// generated events, each sent in binary and in structured mode, arrive at
// a binary and a structured catch-all Trigger as they were sent.
func TestAcceptedEventsArriveAsSent(t *testing.T) {
	r := newRig(t)
	inputs := seeds()
	gen := rand.New(rand.NewPCG(13, 17))
	for n := range 60 {
		inputs = append(inputs, randomInput(gen, n))
	}
	for _, in := range inputs {
		for _, structured := range []bool{false, true} {
			name := map[bool]string{false: "binary", true: "structured"}[structured] + " in/" + in.id
			t.Run(name, func(t *testing.T) {
				in := in
				in.id = map[bool]string{false: "b:", true: "s:"}[structured] + in.id
				r.deliver(t, in, structured)
			})
		}
	}
}

// TestRefusedRequestsAreNeverStored: what the ingress refuses leaves the
// stream as it was and reaches no Trigger.
func TestRefusedRequestsAreNeverStored(t *testing.T) {
	r := newRig(t)
	before := r.h.stored()
	for name, req := range map[string]func() (*http.Request, error){
		"no id": func() (*http.Request, error) {
			in := input{source: "/s", typ: "t"}
			return in.request(r.ingress, false)
		},
		"bad percent-encoding": func() (*http.Request, error) {
			req, err := input{id: "pct", source: "/s", typ: "t"}.request(r.ingress, false)
			if err == nil {
				req.Header.Set("Ce-Subject", "%zz")
			}
			return req, err
		},
		"spec version 2.0": func() (*http.Request, error) {
			req, err := input{id: "v2", source: "/s", typ: "t"}.request(r.ingress, false)
			if err == nil {
				req.Header.Set("Ce-Specversion", "2.0")
			}
			return req, err
		},
		"broken structured": func() (*http.Request, error) {
			req, err := http.NewRequest(http.MethodPost, r.ingress, strings.NewReader(`{"specversion":"1.0","id":`))
			if err == nil {
				req.Header.Set("Content-Type", cloudevents.ApplicationCloudEventsJSON)
			}
			return req, err
		},
	} {
		req, err := req()
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", name, resp.StatusCode)
		}
	}
	if after := r.h.stored(); len(after) != len(before) {
		t.Fatalf("stream went from %d to %d events on refused requests", len(before), len(after))
	}
	for _, mode := range outModes {
		r.subs[mode].mu.Lock()
		n := len(r.subs[mode].got)
		r.subs[mode].mu.Unlock()
		if n != 0 {
			t.Errorf("%s Trigger got %d events from refused requests", mode, n)
		}
	}
}

// FuzzAcceptedEventRoundTrip: for any data, content type, subject and
// extension value, a 202 means both catch-all Triggers get the event as
// sent; a refusal means nothing new is stored.
func FuzzAcceptedEventRoundTrip(f *testing.F) {
	for _, s := range seeds() {
		var ext string
		for _, v := range s.ext {
			ext = v
		}
		f.Add(false, s.contentType, s.subject, ext, s.data)
		f.Add(true, s.contentType, s.subject, ext, s.data)
	}
	r := newRig(f)
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, structured bool, contentType, subject, ext string, data []byte) {
		utf := utf8.ValidString(subject) && utf8.ValidString(ext) && utf8.ValidString(contentType)
		if structured && !utf {
			return // the JSON encoder would send U+FFFD instead: another event
		}
		in := input{
			id: fmt.Sprintf("fuzz-%d-%d", time.Now().UnixNano(), n.Add(1)), source: "/fuzz", typ: "com.example.fuzz",
			subject: subject, contentType: contentType, data: data, ext: map[string]string{"fuzzext": ext},
		}
		req, err := in.request(r.ingress, structured)
		if err != nil {
			return
		}
		stream, err := r.h.js.Stream(context.Background(), r.h.ref.StreamName())
		if err != nil {
			t.Fatal(err)
		}
		before, err := stream.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return // net/http would not send it
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			after, err := stream.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if after.State.LastSeq != before.State.LastSeq {
				t.Fatalf("refused with %d but stored", resp.StatusCode)
			}
			return
		}
		if !utf {
			t.Fatalf("accepted an event whose attributes are not UTF-8: %+v", in)
		}
		for _, mode := range outModes {
			got, ok := r.subs[mode].await(in.id, 10*time.Second)
			if !ok {
				t.Fatalf("%s out: accepted with 202 but never delivered: %+v", mode, in)
			}
			in.check(t, mode, got)
		}
	})
}
