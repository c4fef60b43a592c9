package traces_test

import (
	"bytes"
	"compress/gzip"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/koffeeshop/koffeeshop/local/traces"
)

// TestStoreIsBounded: the least recently added trace goes first, and a
// trace keeps at most MaxSpans spans.
func TestStoreIsBounded(t *testing.T) {
	s := traces.New(2)
	now := time.Now()
	for _, id := range []string{"a", "b", "c"} {
		s.Add(traces.Span{TraceID: id, SpanID: id + "1", Start: now})
	}
	if s.Len() != 2 || len(s.Trace("a")) != 0 || len(s.Trace("c")) != 1 {
		t.Fatalf("kept %d traces (a: %d spans), want b and c", s.Len(), len(s.Trace("a")))
	}
	for i := range traces.MaxSpans + 10 {
		s.Add(traces.Span{TraceID: "b", SpanID: string(rune('a' + i%26)), Start: now})
	}
	if n := len(s.Trace("b")); n != traces.MaxSpans {
		t.Fatalf("trace b has %d spans, want %d", n, traces.MaxSpans)
	}
}

// TestReceiverTakesOTLP: an OTLP/HTTP protobuf export, gzipped or not,
// lands in the store with its service name and parent; other content is
// refused with 415 or 400.
func TestReceiverTakesOTLP(t *testing.T) {
	s := traces.New(0)
	srv := httptest.NewServer(s.Receiver(nil, slog.New(slog.DiscardHandler)))
	t.Cleanup(srv.Close)

	trace := bytes.Repeat([]byte{1}, 16)
	req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "take-order"}}}}},
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{
			TraceId: trace, SpanId: []byte{2, 2, 2, 2, 2, 2, 2, 2}, ParentSpanId: []byte{3, 3, 3, 3, 3, 3, 3, 3},
			Name: "take-order com.koffeeshop.order.placed", StartTimeUnixNano: 1, EndTimeUnixNano: 2,
		}}}},
	}}}
	body, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	post := func(b []byte, ct, enc string) int {
		t.Helper()
		r, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(b))
		r.Header.Set("Content-Type", ct)
		if enc != "" {
			r.Header.Set("Content-Encoding", enc)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(body, "application/x-protobuf", ""); code != http.StatusOK {
		t.Fatalf("protobuf export: %d", code)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(body)
	_ = zw.Close()
	if code := post(gz.Bytes(), "application/x-protobuf", "gzip"); code != http.StatusOK {
		t.Fatalf("gzipped export: %d", code)
	}
	spans := s.Trace("01010101010101010101010101010101")
	if len(spans) != 2 || spans[0].Service != "take-order" || spans[0].ParentID != "0303030303030303" {
		t.Fatalf("stored %+v, want 2 take-order spans under 0303030303030303", spans)
	}
	if code := post([]byte(`{}`), "application/json", ""); code != http.StatusUnsupportedMediaType {
		t.Errorf("JSON export: %d, want 415", code)
	}
	if code := post([]byte("not protobuf"), "application/x-protobuf", ""); code != http.StatusBadRequest {
		t.Errorf("garbage: %d, want 400", code)
	}
}
