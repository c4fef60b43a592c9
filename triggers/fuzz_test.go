package triggers_test

import (
	"context"
	"testing"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"

	"github.com/koffeeshop/koffeeshop/triggers"
)

// FuzzFilter evaluates fuzzed CESQL and exact filters on fuzzed events: no
// input may panic, an exact filter on an event's own type must pass, and not
// must invert every pass and fail.
func FuzzFilter(f *testing.F) {
	f.Add("type = 'a'", "a", "/s", "eu")
	f.Add("region LIKE 'e%' AND NOT (source = '/x')", "com.koffeeshop.order.placed", "/shop", "eu")
	f.Add("INT(region) > 3 OR EXISTS subject", "t", "/", "42")
	f.Add("", "t", "/", "")
	f.Fuzz(func(t *testing.T, expr, typ, source, region string) {
		ev := filterEvent(typ, source, "", nil)
		if region != "" {
			ev.SetExtension("region", region)
		}
		ctx := context.Background()
		if expr != "" {
			tr := &eventingv1.Trigger{Spec: eventingv1.TriggerSpec{Filters: []eventingv1.SubscriptionsAPIFilter{{CESQL: expr}}}}
			if fe := eventingv1.ValidateSubscriptionAPIFiltersList(ctx, tr.Spec.Filters); fe == nil {
				f, err := triggers.NewFilter(tr)
				if err == nil {
					res := f.Filter(ctx, ev)
					notTr := &eventingv1.Trigger{Spec: eventingv1.TriggerSpec{Filters: []eventingv1.SubscriptionsAPIFilter{{Not: &eventingv1.SubscriptionsAPIFilter{CESQL: expr}}}}}
					nf, err := triggers.NewFilter(notTr)
					if err != nil {
						t.Fatalf("not(%q): %v", expr, err)
					}
					inv := nf.Filter(ctx, ev)
					if (res == eventfilter.PassFilter) != (inv == eventfilter.FailFilter) {
						t.Fatalf("cesql %q gives %s but not(...) gives %s", expr, res, inv)
					}
				}
			}
		}
		// The sdk trims attributes it is given: compare with what the event holds.
		if typ := ev.Type(); typ != "" {
			tr := &eventingv1.Trigger{Spec: eventingv1.TriggerSpec{Filters: []eventingv1.SubscriptionsAPIFilter{{Exact: map[string]string{"type": typ}}}}}
			f, err := triggers.NewFilter(tr)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Filter(ctx, ev); got != eventfilter.PassFilter {
				t.Fatalf("exact type %q on its own event: %s", typ, got)
			}
		}
	})
}
