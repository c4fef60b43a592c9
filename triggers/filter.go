package triggers

import (
	"context"
	"fmt"
	"slices"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	kbroker "knative.dev/eventing/pkg/broker"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/eventfilter/attributes"
	"knative.dev/eventing/pkg/eventfilter/subscriptionsapi"

	"github.com/koffeeshop/koffeeshop/broker"
)

// NewFilter builds the Trigger's filter as Knative's broker filter does:
// spec.filters (the SubscriptionsAPI dialects) wins when set, else the
// legacy spec.filter.attributes exact match, else everything passes.
//
// The leaf dialects (exact, prefix, suffix, not, cesql) are Knative's own.
// all and any are composed here with the same results as Knative's: its
// all/any filters reorder their children from a background goroutine while
// Filter ranges over them, a data race under concurrent dispatch.
func NewFilter(t *eventingv1.Trigger) (eventfilter.Filter, error) {
	switch {
	case len(t.Spec.Filters) > 0:
		fs, err := materializeList(t.Spec.Filters)
		if err != nil {
			return nil, err
		}
		return all(fs), nil
	case t.Spec.Filter != nil && len(t.Spec.Filter.Attributes) > 0:
		return attributes.NewAttributesFilter(t.Spec.Filter.Attributes), nil
	default:
		return subscriptionsapi.NewNoFilter(), nil
	}
}

func materializeList(in []eventingv1.SubscriptionsAPIFilter) ([]eventfilter.Filter, error) {
	out := make([]eventfilter.Filter, 0, len(in))
	for i, f := range in {
		m, err := materialize(f)
		if err != nil {
			return nil, fmt.Errorf("filters[%d]: %w", i, err)
		}
		if m != nil {
			out = append(out, m)
		}
	}
	return out, nil
}

func materialize(f eventingv1.SubscriptionsAPIFilter) (eventfilter.Filter, error) {
	switch {
	case len(f.Exact) > 0:
		return subscriptionsapi.NewExactFilter(f.Exact)
	case len(f.Prefix) > 0:
		return subscriptionsapi.NewPrefixFilter(f.Prefix)
	case len(f.Suffix) > 0:
		return subscriptionsapi.NewSuffixFilter(f.Suffix)
	case len(f.All) > 0:
		fs, err := materializeList(f.All)
		if err != nil {
			return nil, fmt.Errorf("all: %w", err)
		}
		return all(fs), nil
	case len(f.Any) > 0:
		fs, err := materializeList(f.Any)
		if err != nil {
			return nil, fmt.Errorf("any: %w", err)
		}
		return anyOf(fs), nil
	case f.Not != nil:
		inner, err := materialize(*f.Not)
		if err != nil {
			return nil, fmt.Errorf("not: %w", err)
		}
		return subscriptionsapi.NewNotFilter(inner), nil
	case f.CESQL != "":
		cf, err := newCESQLFilter(f.CESQL)
		if err != nil {
			return nil, err
		}
		return failOnPanic{inner: cf}, nil
	}
	return nil, nil
}

// newCESQLFilter builds Knative's CESQL filter. Its parser panics on some
// expressions that do not parse ("type = "): that is an invalid filter,
// not a reason to take the dispatcher or the controller down.
func newCESQLFilter(expr string) (f eventfilter.Filter, err error) {
	defer func() {
		if p := recover(); p != nil {
			f, err = nil, fmt.Errorf("cesql %q does not parse: %v", expr, p)
		}
	}()
	return subscriptionsapi.NewCESQLFilter(expr)
}

// failOnPanic turns a panic of the filter into a failed match. Knative's
// CESQL filter panics when an expression that passes validation does not
// evaluate to a boolean (cesql: "0"); such a Trigger matches nothing rather
// than crashing the dispatcher.
type failOnPanic struct{ inner eventfilter.Filter }

func (f failOnPanic) Filter(ctx context.Context, e cloudevents.Event) (res eventfilter.FilterResult) {
	defer func() {
		if recover() != nil {
			res = eventfilter.FailFilter
		}
	}()
	return f.inner.Filter(ctx, e)
}

func (f failOnPanic) Cleanup() { f.inner.Cleanup() }

// all fails as soon as one child fails; any passes as soon as one child
// passes. Otherwise each answers what its last child answered (NoFilter
// when it has none), as Knative's all and any filters do.
func all(fs []eventfilter.Filter) eventfilter.Filter {
	return shortCircuit(fs, eventfilter.FailFilter)
}

func anyOf(fs []eventfilter.Filter) eventfilter.Filter {
	return shortCircuit(fs, eventfilter.PassFilter)
}

func shortCircuit(fs []eventfilter.Filter, stop eventfilter.FilterResult) eventfilter.Filter {
	if len(fs) == 1 {
		return fs[0]
	}
	return composite{children: fs, stop: stop}
}

// composite evaluates its children in order until one answers stop.
type composite struct {
	children []eventfilter.Filter
	stop     eventfilter.FilterResult
}

func (c composite) Filter(ctx context.Context, e cloudevents.Event) eventfilter.FilterResult {
	res := eventfilter.NoFilter
	for _, f := range c.children {
		if res = f.Filter(ctx, e); res == c.stop {
			return res
		}
	}
	return res
}

func (c composite) Cleanup() {
	for _, f := range c.children {
		f.Cleanup()
	}
}

// filterSubject narrows a Trigger's consumer to one event type when its
// filter requires an exact type, else takes every event of the Broker.
func filterSubject(b broker.Ref, t *eventingv1.Trigger) string {
	if typ, ok := exactType(t); ok {
		return b.TypeSubject(typ)
	}
	return b.Subject()
}

// exactType finds a type every matching event must have: filter.attributes
// type (when filters is unset), or an exact type in the implicit all of
// filters or of a top-level all.
func exactType(t *eventingv1.Trigger) (string, bool) {
	if len(t.Spec.Filters) == 0 {
		if t.Spec.Filter != nil {
			if v := t.Spec.Filter.Attributes["type"]; v != "" {
				return v, true
			}
		}
		return "", false
	}
	return exactTypeIn(t.Spec.Filters)
}

func exactTypeIn(all []eventingv1.SubscriptionsAPIFilter) (string, bool) {
	for _, f := range all {
		if v, ok := f.Exact["type"]; ok && len(f.Exact) == 1 {
			return v, true
		}
		if len(f.All) > 0 {
			if v, ok := exactTypeIn(f.All); ok {
				return v, true
			}
		}
	}
	return "", false
}

// filterReads names the attributes the Trigger's filter reads, when they
// are known without evaluating it: every dialect names them but CESQL,
// whose expressions may read any attribute.
func filterReads(t *eventingv1.Trigger) ([]string, bool) {
	if len(t.Spec.Filters) > 0 {
		var names []string
		for _, f := range t.Spec.Filters {
			if !readsOf(f, &names) {
				return nil, false
			}
		}
		return names, true
	}
	var names []string
	if t.Spec.Filter != nil {
		for k := range t.Spec.Filter.Attributes {
			addRead(&names, k)
		}
	}
	return names, true
}

// addRead adds what the filter key k reads: Knative's LookupAttribute
// reads schemaurl and dataschema alike (the names of 0.3 and 1.0), and
// datamediatype from datacontenttype. The broker's TTL is never decoded:
// Knative filters an event without it, as the full decode does.
func addRead(names *[]string, k string) {
	switch k {
	case kbroker.TTLAttribute:
	case "schemaurl", "dataschema":
		*names = append(*names, "schemaurl", "dataschema")
	case "datamediatype":
		*names = append(*names, "datacontenttype")
	default:
		*names = append(*names, k)
	}
}

func readsOf(f eventingv1.SubscriptionsAPIFilter, names *[]string) bool {
	if f.CESQL != "" {
		return false
	}
	for _, m := range []map[string]string{f.Exact, f.Prefix, f.Suffix} {
		for k := range m {
			addRead(names, k)
		}
	}
	for _, g := range append(slices.Clone(f.All), f.Any...) {
		if !readsOf(g, names) {
			return false
		}
	}
	if f.Not != nil {
		return readsOf(*f.Not, names)
	}
	return true
}
