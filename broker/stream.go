// Package broker is the Knative Broker data plane's ingress: it accepts
// CloudEvents over HTTP and stores each one durably in a NATS JetStream stream
// before it acknowledges the sender.
package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Ref names a Broker.
type Ref struct {
	Namespace string
	Name      string
}

func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// token makes a Kubernetes name usable inside a NATS subject token and a
// stream or consumer name, which may not contain '.', '*', '>' or spaces.
func token(s string) string {
	if !strings.ContainsAny(s, ".*> \t\r\n") {
		return s
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', ' ', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}

// StreamName is the JetStream stream that holds the Broker's events.
func (r Ref) StreamName() string {
	return "KNATIVE_BROKER_" + token(r.Namespace) + "_" + token(r.Name)
}

// Subject is the wildcard subject of all the Broker's events.
func (r Ref) Subject() string {
	return r.base() + ".*"
}

// TypeSubject is the subject an event of type ceType is published on. The
// type is one subject token, so a Trigger whose filter pins the type can
// let JetStream select its events (and count its backlog) server-side. The
// Trigger's own filter still decides: two types that map to one token only
// cost a filtered-out delivery.
func (r Ref) TypeSubject(ceType string) string {
	t := token(ceType)
	switch {
	case t == "":
		t = "_"
	case len(t) > maxTypeToken:
		// NATS closes a connection whose protocol line passes 4 KiB,
		// and a type has no length limit: a long one is hashed.
		sum := sha256.Sum256([]byte(ceType))
		t = "h_" + hex.EncodeToString(sum[:16])
	}
	return r.base() + "." + t
}

// maxTypeToken bounds the subject token of an event type.
const maxTypeToken = 128

func (r Ref) base() string {
	return "knative.broker." + token(r.Namespace) + "." + token(r.Name)
}

// MsgID is the JetStream de-duplication id of an event. The CloudEvents spec
// makes source+id unique per distinct event, so a resent event maps to the
// same id and the stream stores it once.
func MsgID(source, id string) string {
	sum := sha256.Sum256([]byte(source + "\x00" + id))
	return hex.EncodeToString(sum[:16])
}

// StreamOptions tune the stream that backs each Broker.
type StreamOptions struct {
	// Replicas is the JetStream replication factor (1, or 3 on a cluster).
	Replicas int
	// Storage is file (the zero value) or memory.
	Storage jetstream.StorageType
	// MaxAge bounds how long an event is kept. EnsureStream takes 0 for
	// the default (24 h); StreamConfig passes it as it is (0: no limit).
	MaxAge time.Duration
	// DuplicateWindow is how long source+id de-duplication remembers an id.
	DuplicateWindow time.Duration
}

// DefaultStreamOptions are what EnsureStream uses for every zero field:
// one replica, file storage, 24 hours, a 2-minute duplicate window.
func DefaultStreamOptions() StreamOptions {
	return StreamOptions{
		Replicas:        1,
		Storage:         jetstream.FileStorage,
		MaxAge:          24 * time.Hour,
		DuplicateWindow: 2 * time.Minute,
	}
}

func (o StreamOptions) withDefaults() StreamOptions {
	d := DefaultStreamOptions()
	if o.Replicas <= 0 {
		o.Replicas = d.Replicas
	}
	if o.MaxAge == 0 {
		o.MaxAge = d.MaxAge
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = d.DuplicateWindow
	}
	return o
}

// StreamConfig is the stream of the Broker r with the options o as they
// are: the ingress and the dispatchers find it by this name and subjects,
// whoever made it (the local runner or the Broker class's controller).
func StreamConfig(r Ref, o StreamOptions) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        r.StreamName(),
		Description: "Knative Broker " + r.String(),
		Subjects:    []string{r.Subject()},
		Storage:     o.Storage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.MaxAge,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
	}
}

// EnsureStream creates or updates the file-backed stream for the Broker.
func EnsureStream(ctx context.Context, js jetstream.JetStream, r Ref, o StreamOptions) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, StreamConfig(r, o.withDefaults()))
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s for broker %s: %w", r.StreamName(), r, err)
	}
	return s, nil
}
