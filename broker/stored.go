package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"

	"github.com/koffeeshop/koffeeshop/broker/ceheader"
)

// The stored form of an event is the binary content mode of the CloudEvents
// NATS protocol binding: every attribute is a "ce-" message header,
// datacontenttype is the "content-type" header, and the data is the
// payload, byte for byte. Header values are percent-encoded as the HTTP
// binding encodes them, so that any string survives a NATS header. Whatever
// the ingress accepts is stored without an envelope that its data could
// break, and anyone reading the stream with the nats CLI sees standard
// CloudEvents.
//
// Events stored by earlier versions are in the structured content mode
// (Content-Type: application/cloudevents+json, the JSON format as payload);
// Decode reads both.
const (
	storedPrefix      = "ce-"
	storedContentType = "content-type"
)

var storedSpecs = spec.WithPrefix(storedPrefix)

// storedWriter is a binding.BinaryWriter that fills a NATS message.
type storedWriter struct{ msg *nats.Msg }

func (w storedWriter) Start(context.Context) error { return nil }
func (w storedWriter) End(context.Context) error   { return nil }

func (w storedWriter) SetData(r io.Reader) error {
	if b, ok := r.(*bytes.Buffer); ok {
		// An event's own data: no copy.
		w.msg.Data = b.Bytes()
		return nil
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read data: %w", err)
	}
	w.msg.Data = data
	return nil
}

func (w storedWriter) SetAttribute(attr spec.Attribute, value any) error {
	if attr.Kind() == spec.DataContentType {
		return w.set(storedContentType, value, false)
	}
	return w.set(storedPrefix+attr.Name(), value, true)
}

func (w storedWriter) SetExtension(name string, value any) error {
	return w.set(storedPrefix+name, value, true)
}

func (w storedWriter) set(key string, value any, encode bool) error {
	if value == nil {
		delete(w.msg.Header, key)
		return nil
	}
	s, err := types.Format(value)
	if err != nil {
		return fmt.Errorf("attribute %s: %w", key, err)
	}
	if encode {
		s = ceheader.Encode(s)
	} else if strings.ContainsAny(s, "\r\n") {
		return fmt.Errorf("attribute %s: a line break cannot be stored", key)
	}
	w.msg.Header[key] = []string{s}
	return nil
}

// encodeStored writes e into msg in the stored form.
func encodeStored(ctx context.Context, e *cloudevents.Event, msg *nats.Msg) error {
	_, err := binding.Write(ctx, binding.ToMessage(e), nil, storedWriter{msg})
	if err != nil {
		return fmt.Errorf("encode event %s: %w", e.ID(), err)
	}
	return nil
}

// storedMessage is a stored event as a binding.Message in binary mode.
type storedMessage struct {
	header  nats.Header
	data    []byte
	version spec.Version
	// only, when set, names the attributes read; the others are skipped.
	only []string
}

func (m *storedMessage) ReadEncoding() binding.Encoding { return binding.EncodingBinary }

func (m *storedMessage) ReadStructured(context.Context, binding.StructuredWriter) error {
	return binding.ErrNotStructured
}

func (m *storedMessage) ReadBinary(_ context.Context, w binding.BinaryWriter) error {
	for k, vs := range m.header {
		if len(vs) == 0 {
			continue
		}
		if strings.EqualFold(k, storedContentType) {
			if m.skip("datacontenttype") {
				continue
			}
			if err := w.SetAttribute(m.version.AttributeFromKind(spec.DataContentType), vs[0]); err != nil {
				return err
			}
			continue
		}
		if len(k) <= len(storedPrefix) || !strings.EqualFold(k[:len(storedPrefix)], storedPrefix) || m.skip(k[len(storedPrefix):]) {
			continue
		}
		v, err := ceheader.Decode(vs[0])
		if err != nil {
			return fmt.Errorf("header %s: %w", k, err)
		}
		name := strings.ToLower(k[len(storedPrefix):])
		if attr := m.version.Attribute(storedPrefix + name); attr != nil {
			if attr.Kind() == spec.SpecVersion {
				continue // m.version is the specversion
			}
			err = w.SetAttribute(attr, v)
		} else {
			err = w.SetExtension(name, v)
		}
		if err != nil {
			return err
		}
	}
	if len(m.data) > 0 {
		// A *bytes.Buffer is taken as it is by sdk-go's event builder:
		// the event's data is the message's, not a copy.
		return w.SetData(bytes.NewBuffer(m.data))
	}
	return nil
}

func (m *storedMessage) Finish(error) error { return nil }

// skip reports whether attribute name is left out of what m reads.
func (m *storedMessage) skip(name string) bool {
	return m.only != nil && !slices.ContainsFunc(m.only, func(n string) bool { return strings.EqualFold(n, name) })
}

// GetAttribute and GetExtension make storedMessage a
// binding.MessageMetadataReader, which sdk-go's transformers read.
func (m *storedMessage) GetAttribute(k spec.Kind) (spec.Attribute, any) {
	attr := m.version.AttributeFromKind(k)
	if attr == nil {
		return nil, nil
	}
	if k == spec.DataContentType {
		if v := headerFold(m.header, storedContentType); v != "" {
			return attr, v
		}
		return attr, nil
	}
	return attr, m.GetExtension(attr.Name())
}

func (m *storedMessage) GetExtension(name string) any {
	raw := headerFold(m.header, storedPrefix+name)
	if raw == "" {
		return nil
	}
	v, err := ceheader.Decode(raw)
	if err != nil {
		return nil
	}
	return v
}

// ErrNotStored is wrapped by Decode when a message is in neither form.
var ErrNotStored = errors.New("not a stored CloudEvent")

// Decode reads an event in the stored form (or in the structured form of
// earlier versions) from a message's headers and data.
func Decode(h nats.Header, data []byte) (cloudevents.Event, error) {
	for k, vs := range h {
		if len(vs) > 0 && strings.EqualFold(k, storedPrefix+"specversion") {
			version := storedSpecs.Version(vs[0])
			if version == nil {
				return cloudevents.Event{}, fmt.Errorf("decode stored event: specversion %q is not supported", vs[0])
			}
			e, err := binding.ToEvent(context.Background(), &storedMessage{header: h, data: data, version: version})
			if err != nil {
				return cloudevents.Event{}, fmt.Errorf("decode stored event: %w", err)
			}
			return *e, nil
		}
	}
	if ct := headerFold(h, storedContentType); format.Lookup(ct) == format.JSON {
		e := cloudevents.NewEvent()
		if err := e.UnmarshalJSON(data); err != nil {
			return e, fmt.Errorf("decode stored event: %w", err)
		}
		return e, nil
	}
	return cloudevents.Event{}, fmt.Errorf("decode stored event: %w: no ce-specversion header and no %s content type", ErrNotStored, cloudevents.ApplicationCloudEventsJSON)
}

// DecodeAttributes is Decode of the named attributes and extensions only,
// without the data, for a reader that needs no more, such as a filter on
// known attributes: the other headers are not decoded at all. A message in
// the structured form of earlier versions is decoded whole.
func DecodeAttributes(h nats.Header, data []byte, names []string) (cloudevents.Event, error) {
	version := storedSpecs.Version(headerFold(h, storedPrefix+"specversion"))
	if version == nil {
		return Decode(h, data)
	}
	// A nil only reads everything: with no names, read none (the version
	// comes from the specversion header either way). No copy of names per
	// message.
	only := names
	if only == nil {
		only = []string{}
	}
	e, err := binding.ToEvent(context.Background(), &storedMessage{header: h, version: version, only: only})
	if err != nil {
		return cloudevents.Event{}, fmt.Errorf("decode stored event: %w", err)
	}
	return *e, nil
}

// StoredAttribute is the value of an attribute or extension of a message
// in the stored form, percent-decoded; "" when it has none (datacontenttype
// excepted: it is the content-type header).
func StoredAttribute(h nats.Header, name string) string {
	m := storedMessage{header: h}
	v, _ := m.GetExtension(name).(string)
	return v
}

// Decode's event shares its data with the message: neither may be changed
// while the other is in use.

// CopyHTTPBinary writes the attributes of a message in the stored form into
// h as the binary mode of the CloudEvents HTTP binding has them: the
// stored ce- headers carry the same percent-encoding as HTTP's, so they go
// out as they are, with no event in between. Extensions named in omit are
// left out. It reports false, writing nothing, for a message stored in the
// structured form of earlier versions.
func CopyHTTPBinary(stored nats.Header, h http.Header, omit ...string) bool {
	if headerFold(stored, storedPrefix+"specversion") == "" {
		return false
	}
	for k, vs := range stored {
		if len(vs) == 0 {
			continue
		}
		if strings.EqualFold(k, storedContentType) {
			h["Content-Type"] = vs[:1]
			continue
		}
		if len(k) <= len(storedPrefix) || !strings.EqualFold(k[:len(storedPrefix)], storedPrefix) {
			continue
		}
		if slices.ContainsFunc(omit, func(o string) bool { return strings.EqualFold(k[len(storedPrefix):], o) }) {
			continue
		}
		h[textproto.CanonicalMIMEHeaderKey(k)] = vs[:1]
	}
	return true
}

// StoredIdentity is what the ce- headers of a stored message say of its
// event (id, source, type, those present), to log one that does not
// decode.
func StoredIdentity(h nats.Header) []any {
	var out []any
	for _, k := range []string{"id", "source", "type"} {
		if v := headerFold(h, storedPrefix+k); v != "" {
			out = append(out, k, v)
		}
	}
	return out
}

// headerFold is h's first value for key, whatever the case of its name.
func headerFold(h nats.Header, key string) string {
	for k, vs := range h {
		if len(vs) > 0 && strings.EqualFold(k, key) {
			return vs[0]
		}
	}
	return ""
}
