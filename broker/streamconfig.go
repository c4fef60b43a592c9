package broker

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Keys of the ConfigMap that a Broker's spec.config names. Other keys are
// ignored, so one ConfigMap may also carry settings for something else
// (a cluster's default Broker config often does).
const (
	// KeyReplicas is the JetStream replication factor, 1 to 5.
	KeyReplicas = "replicas"
	// KeyStorage is "file" or "memory".
	KeyStorage = "storage"
	// KeyMaxAge is how long an event is kept, a Go duration ("24h"); "0"
	// keeps events without an age limit.
	KeyMaxAge = "maxAge"
	// KeyDuplicateWindow is how long source+id de-duplication remembers an
	// event, a Go duration ("2m").
	KeyDuplicateWindow = "duplicateWindow"
)

// maxReplicas is JetStream's own limit on a stream's replicas.
const maxReplicas = 5

// ParseStreamOptions reads a ConfigMap's data over
// broker.DefaultStreamOptions, which are the local runner's too. Its error
// names every bad key, so a user fixes them in one go.
func ParseStreamOptions(data map[string]string) (StreamOptions, error) {
	s := DefaultStreamOptions()
	var bad []string
	if v, ok := data[KeyReplicas]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > maxReplicas {
			bad = append(bad, fmt.Sprintf("%s: %q is not a whole number from 1 to %d", KeyReplicas, v, maxReplicas))
		} else {
			s.Replicas = n
		}
	}
	if v, ok := data[KeyStorage]; ok {
		switch strings.TrimSpace(v) {
		case "file":
			s.Storage = jetstream.FileStorage
		case "memory":
			s.Storage = jetstream.MemoryStorage
		default:
			bad = append(bad, fmt.Sprintf("%s: %q is neither file nor memory", KeyStorage, v))
		}
	}
	if v, ok := data[KeyMaxAge]; ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < 0 {
			bad = append(bad, fmt.Sprintf("%s: %q is not a duration of 0 or more (e.g. 24h)", KeyMaxAge, v))
		} else {
			s.MaxAge = d
		}
	}
	if v, ok := data[KeyDuplicateWindow]; ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d <= 0 {
			bad = append(bad, fmt.Sprintf("%s: %q is not a positive duration (e.g. 2m)", KeyDuplicateWindow, v))
		} else {
			s.DuplicateWindow = d
		}
	}
	// JetStream refuses this too, but only once the stream is requested,
	// and in words about its own fields; say it in the ConfigMap's.
	if len(bad) == 0 && s.MaxAge > 0 && s.DuplicateWindow > s.MaxAge {
		bad = append(bad, fmt.Sprintf("%s (%v) is longer than %s (%v)", KeyDuplicateWindow, s.DuplicateWindow, KeyMaxAge, s.MaxAge))
	}
	if len(bad) > 0 {
		return StreamOptions{}, fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return s, nil
}
