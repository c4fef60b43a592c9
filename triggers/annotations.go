package triggers

import (
	"fmt"
	"strconv"
	"time"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
)

// Annotations on a Trigger that tune its consumer and dispatcher, read the
// same way by the local runner and the Broker class's controller.
const (
	// ConcurrencyAnnotation sets how many events it delivers at once.
	ConcurrencyAnnotation = "koffeeshop.dev/delivery-concurrency"
	// AckWaitAnnotation sets how long JetStream waits, without an ack or
	// an in-progress signal, before it redelivers an event (a Go
	// duration): how soon events in the hands of a crashed dispatcher
	// come back.
	AckWaitAnnotation = "koffeeshop.dev/ack-wait"
)

// AnnotatedConcurrency reads ConcurrencyAnnotation: ok is false without
// it, and err tells why a value is not a positive whole number.
func AnnotatedConcurrency(t *eventingv1.Trigger) (n int, ok bool, err error) {
	v, ok := t.Annotations[ConcurrencyAnnotation]
	if !ok {
		return 0, false, nil
	}
	n, err = strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, true, fmt.Errorf("annotation %s: %q is not a positive whole number", ConcurrencyAnnotation, v)
	}
	return n, true, nil
}

// AnnotatedAckWait reads AckWaitAnnotation: ok is false without it, and
// err tells why a value is not a positive Go duration.
func AnnotatedAckWait(t *eventingv1.Trigger) (d time.Duration, ok bool, err error) {
	v, ok := t.Annotations[AckWaitAnnotation]
	if !ok {
		return 0, false, nil
	}
	d, err = time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, true, fmt.Errorf("annotation %s: %q is not a positive duration", AckWaitAnnotation, v)
	}
	return d, true, nil
}
