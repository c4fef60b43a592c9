package triggers

import (
	"context"
	"net/url"
)

// Endpoint is where a subscriber (or a dead-letter sink) is reached.
// Acquire returns the URL of an instance that can take one request now,
// waiting for one if there is none yet (a cold start), and a release func
// to call when the request is done.
type Endpoint interface {
	Acquire(ctx context.Context) (*url.URL, func(), error)
}

// URL is an Endpoint at a fixed address, as for a subscriber.uri.
type URL struct{ U *url.URL }

// Acquire returns the fixed address at once.
func (u URL) Acquire(context.Context) (*url.URL, func(), error) { return u.U, func() {}, nil }

// ParseURL returns the fixed Endpoint for raw.
func ParseURL(raw string) (URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return URL{}, err
	}
	return URL{U: u}, nil
}
