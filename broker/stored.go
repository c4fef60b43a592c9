package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
			if err := w.SetAttribute(m.version.AttributeFromKind(spec.DataContentType), vs[0]); err != nil {
				return err
			}
			continue
		}
		if len(k) <= len(storedPrefix) || !strings.EqualFold(k[:len(storedPrefix)], storedPrefix) {
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
		return w.SetData(bytes.NewReader(m.data))
	}
	return nil
}

func (m *storedMessage) Finish(error) error { return nil }

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
