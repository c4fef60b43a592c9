package triggers

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	"knative.dev/eventing/pkg/kncloudevents"
)

// Policy is a DeliverySpec made executable: how often, how far apart and how
// long to try a delivery.
type Policy struct {
	// Retries is how many times a failed delivery is tried again after the
	// first attempt (spec.delivery.retry).
	Retries int
	// Timeout bounds one attempt.
	Timeout time.Duration
	// RetryAfterMax caps a Retry-After on 429/503; nil ignores Retry-After
	// (Knative's opt-in behaviour), 0 also ignores it.
	RetryAfterMax *time.Duration

	cfg kncloudevents.RetryConfig
}

// NewPolicy builds a Policy from a DeliverySpec with Knative's own parsing of
// retry, backoffPolicy, backoffDelay, timeout and retryAfterMax.
// defaultTimeout applies when the spec sets no timeout.
func NewPolicy(spec *eventingduckv1.DeliverySpec, defaultTimeout time.Duration) (Policy, error) {
	if spec == nil {
		spec = &eventingduckv1.DeliverySpec{}
	}
	cfg, err := kncloudevents.RetryConfigFromDeliverySpec(*spec)
	if err != nil {
		return Policy{}, fmt.Errorf("delivery spec: %w", err)
	}
	p := Policy{Retries: cfg.RetryMax, Timeout: cfg.RequestTimeout, RetryAfterMax: cfg.RetryAfterMaxDuration, cfg: cfg}
	if p.Timeout <= 0 {
		p.Timeout = defaultTimeout
	}
	return p, nil
}

// retryable reports whether an attempt that ended with resp or err may be
// retried: transport errors, 5xx, 404, 408, 409 and 429 (Knative's rules).
func retryable(resp *http.Response, err error) bool {
	ok, _ := kncloudevents.SelectiveRetry(context.Background(), resp, err)
	return ok
}

// Delay is the wait before retry number retry (1 for the first retry): the
// DeliverySpec backoff as Knative documents it, backoffDelay × retry for
// linear and backoffDelay × 2^retry for exponential (eventing's own
// RetryConfig.Backoff, called as its tests call it), or the Retry-After of
// a 429/503 when retryAfterMax allows one and it is longer.
func (p Policy) Delay(retry int, resp *http.Response) time.Duration {
	d := p.cfg.Backoff(retry, resp)
	if p.RetryAfterMax != nil && *p.RetryAfterMax > 0 && resp != nil &&
		(resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		ra := retryAfter(resp.Header.Get("Retry-After"), time.Now())
		if ra > *p.RetryAfterMax {
			ra = *p.RetryAfterMax
		}
		if ra > d {
			d = ra
		}
	}
	if d < 0 {
		d = 0
	}
	return d
}

// retryAfter parses an RFC 9110 Retry-After: delay-seconds or an HTTP-date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now)
	}
	return 0
}
