// Package broker is the Knative Broker data plane's ingress: it accepts
// CloudEvents over HTTP and stores each one durably in a NATS JetStream stream
// before it acknowledges the sender.
package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

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
