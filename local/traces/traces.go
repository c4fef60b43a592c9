// Package traces keeps the recent traces of a local shop in memory, within
// a bound, for the board's timelines: the runner's own spans through an
// OpenTelemetry span processor, and the functions' spans, which they export
// to the runner over OTLP/HTTP.
package traces

import (
	"compress/gzip"
	"container/list"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Bounds of a Store.
const (
	// DefaultMaxTraces matches the board's orders: an order's timeline
	// is there while the order is (a trace of an order takes about
	// 10 KiB).
	DefaultMaxTraces = 1000
	// MaxSpans bounds one trace: a retry loop must not grow it forever.
	MaxSpans = 256
	// maxBody bounds one OTLP request.
	maxBody = 8 << 20
)

// Span is one span as the board shows it.
type Span struct {
	TraceID  string            `json:"traceId"`
	SpanID   string            `json:"spanId"`
	ParentID string            `json:"parentId,omitempty"`
	Name     string            `json:"name"`
	Service  string            `json:"service"`
	Start    time.Time         `json:"start"`
	End      time.Time         `json:"end"`
	Error    bool              `json:"error,omitempty"`
	Attrs    map[string]string `json:"attrs,omitempty"`
}

// Store holds the spans of the most recent traces.
type Store struct {
	max int

	mu     sync.Mutex
	traces map[string]*list.Element // of *entry, by trace id
	recent *list.List               // least recently added to first
}

type entry struct {
	id    string
	spans []Span
}

// New returns a Store of at most maxTraces traces (DefaultMaxTraces when
// 0), each of at most MaxSpans spans.
func New(maxTraces int) *Store {
	if maxTraces <= 0 {
		maxTraces = DefaultMaxTraces
	}
	return &Store{max: maxTraces, traces: map[string]*list.Element{}, recent: list.New()}
}

// Add keeps spans, forgetting the least recently added traces beyond the
// bound.
func (s *Store) Add(spans ...Span) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sp := range spans {
		el, ok := s.traces[sp.TraceID]
		if !ok {
			el = s.recent.PushBack(&entry{id: sp.TraceID})
			s.traces[sp.TraceID] = el
		} else {
			s.recent.MoveToBack(el)
		}
		e := el.Value.(*entry)
		if len(e.spans) < MaxSpans {
			e.spans = append(e.spans, sp)
		}
	}
	for s.recent.Len() > s.max {
		e := s.recent.Remove(s.recent.Front()).(*entry)
		delete(s.traces, e.id)
	}
}

// Trace returns the spans of a trace, by start time.
func (s *Store) Trace(id string) []Span {
	s.mu.Lock()
	el, ok := s.traces[id]
	var out []Span
	if ok {
		out = append(out, el.Value.(*entry).spans...)
	}
	s.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Len is the number of traces kept.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recent.Len()
}

// Processor is an OpenTelemetry span processor that keeps every ended span
// of this process in s.
func (s *Store) Processor() sdktrace.SpanProcessor { return processor{s} }

type processor struct{ s *Store }

func (p processor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (p processor) Shutdown(context.Context) error                  { return nil }
func (p processor) ForceFlush(context.Context) error                { return nil }

func (p processor) OnEnd(sp sdktrace.ReadOnlySpan) {
	sc := sp.SpanContext()
	out := Span{
		TraceID: sc.TraceID().String(),
		SpanID:  sc.SpanID().String(),
		Name:    sp.Name(),
		Start:   sp.StartTime(),
		End:     sp.EndTime(),
		Error:   sp.Status().Code == codes.Error,
		Attrs:   attrs(sp.Attributes()),
	}
	if parent := sp.Parent(); parent.IsValid() {
		out.ParentID = parent.SpanID().String()
	}
	if v, ok := sp.Resource().Set().Value(semconv.ServiceNameKey); ok {
		out.Service = v.AsString()
	}
	p.s.Add(out)
}

func attrs(kvs []attribute.KeyValue) map[string]string {
	if len(kvs) == 0 {
		return nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.Emit()
	}
	return m
}

// AddOTLP keeps the spans of an OTLP export.
func (s *Store) AddOTLP(rss []*tracepb.ResourceSpans) {
	var out []Span
	for _, rs := range rss {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == string(semconv.ServiceNameKey) {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				out = append(out, Span{
					TraceID:  hex.EncodeToString(sp.GetTraceId()),
					SpanID:   hex.EncodeToString(sp.GetSpanId()),
					ParentID: hex.EncodeToString(sp.GetParentSpanId()),
					Name:     sp.GetName(),
					Service:  service,
					Start:    time.Unix(0, int64(sp.GetStartTimeUnixNano())),
					End:      time.Unix(0, int64(sp.GetEndTimeUnixNano())),
					Error:    sp.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
					Attrs:    otlpAttrs(sp.GetAttributes()),
				})
			}
		}
	}
	s.Add(out...)
}

func otlpAttrs(kvs []*commonpb.KeyValue) map[string]string {
	if len(kvs) == 0 {
		return nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		v := kv.GetValue()
		switch {
		case v.GetStringValue() != "":
			m[kv.GetKey()] = v.GetStringValue()
		default:
			m[kv.GetKey()] = fmt.Sprint(anyValue(v))
		}
	}
	return m
}

func anyValue(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	}
	return ""
}

// Receiver is an OTLP/HTTP trace receiver (protobuf, as OpenTelemetry's
// SDKs send by default): it keeps what it receives in the Store and hands
// it to forward, which passes it on to a collector.
func (s *Store) Receiver(forward func(context.Context, []*tracepb.ResourceSpans) error, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			http.Error(w, fmt.Sprintf("content type %q: send OTLP protobuf (application/x-protobuf)", ct), http.StatusUnsupportedMediaType)
			return
		}
		var body io.Reader = http.MaxBytesReader(w, r.Body, maxBody)
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(body)
			if err != nil {
				http.Error(w, "invalid gzip body", http.StatusBadRequest)
				return
			}
			defer zr.Close()
			body = io.LimitReader(zr, maxBody)
		}
		b, err := io.ReadAll(body)
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			http.Error(w, "not an OTLP trace export: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.AddOTLP(req.GetResourceSpans())
		if forward != nil {
			if err := forward(r.Context(), req.GetResourceSpans()); err != nil {
				log.Warn("could not forward the functions' spans to the collector", "err", err)
			}
		}
		resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(resp)
	})
}
