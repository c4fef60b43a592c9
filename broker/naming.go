package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// The names of a Broker's stream, of its subjects and of its Triggers'
// durable consumers live on in JetStream: in the servers' stream and
// consumer configs, and in the subject of every stored event. For a valid
// Kubernetes name they must stay byte for byte what they are, or a new
// version would not find the events an old one stored.

// Ref names a Broker.
type Ref types.NamespacedName

// String is namespace/name.
func (r Ref) String() string { return types.NamespacedName(r).String() }

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

// ConsumerName is the durable JetStream consumer of the Trigger named
// trigger, on its Broker's stream.
func ConsumerName(trigger types.NamespacedName) string {
	return "trigger_" + token(trigger.Namespace) + "_" + token(trigger.Name)
}

// token makes a name usable as one NATS subject token and inside a stream
// or consumer name, which may not hold '.', '*', '>' or white space. A
// Kubernetes name can only hold the '.'; an event type any of them.
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
