package triggers_test

import (
	"context"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"knative.dev/eventing/pkg/eventfilter"
	"sigs.k8s.io/yaml"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"

	"github.com/koffeeshop/koffeeshop/triggers"
)

func filterEvent(typ, source, subject string, ext map[string]string) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID("1")
	e.SetType(typ)
	e.SetSource(source)
	if subject != "" {
		e.SetSubject(subject)
	}
	for k, v := range ext {
		e.SetExtension(k, v)
	}
	return e
}

// TestFilterDialects checks every filter dialect of a Trigger against the
// results Knative's broker filter gives.
func TestFilterDialects(t *testing.T) {
	order := filterEvent("com.koffeeshop.order.placed", "/shop/front", "o-1", map[string]string{"region": "eu"})
	ready := filterEvent("com.koffeeshop.beverage.ready", "/koffeeshop/prepare-beverage", "", nil)
	cases := []struct {
		name  string
		spec  string // Trigger spec fields, YAML
		event cloudevents.Event
		want  eventfilter.FilterResult
	}{
		{"no filter passes everything", ``, order, eventfilter.NoFilter},
		{"attributes: exact match passes", `filter: {attributes: {type: com.koffeeshop.order.placed}}`, order, eventfilter.PassFilter},
		{"attributes: other value fails", `filter: {attributes: {type: com.koffeeshop.order.accepted}}`, order, eventfilter.FailFilter},
		{"attributes: all must match", `filter: {attributes: {type: com.koffeeshop.order.placed, source: /elsewhere}}`, order, eventfilter.FailFilter},
		{"attributes: extension matches", `filter: {attributes: {region: eu}}`, order, eventfilter.PassFilter},
		{"attributes: empty value means any non-empty value", `filter: {attributes: {subject: ""}}`, order, eventfilter.PassFilter},
		{"attributes: empty value fails on an unset attribute", `filter: {attributes: {subject: ""}}`, ready, eventfilter.FailFilter},
		{"attributes: missing extension fails", `filter: {attributes: {region: eu}}`, ready, eventfilter.FailFilter},
		{"exact passes", `filters: [{exact: {type: com.koffeeshop.order.placed}}]`, order, eventfilter.PassFilter},
		{"exact is case-sensitive", `filters: [{exact: {type: COM.koffeeshop.order.placed}}]`, order, eventfilter.FailFilter},
		{"prefix passes", `filters: [{prefix: {type: com.koffeeshop.order.}}]`, order, eventfilter.PassFilter},
		{"prefix fails", `filters: [{prefix: {type: com.koffeeshop.beverage.}}]`, order, eventfilter.FailFilter},
		{"suffix passes", `filters: [{suffix: {source: /front}}]`, order, eventfilter.PassFilter},
		{"suffix fails", `filters: [{suffix: {source: /back}}]`, order, eventfilter.FailFilter},
		{"all passes when every child passes", `filters: [{all: [{prefix: {type: com.koffeeshop.}}, {exact: {region: eu}}]}]`, order, eventfilter.PassFilter},
		{"all fails when one child fails", `filters: [{all: [{prefix: {type: com.koffeeshop.}}, {exact: {region: us}}]}]`, order, eventfilter.FailFilter},
		{"any passes when one child passes", `filters: [{any: [{exact: {type: x}}, {suffix: {type: .placed}}]}]`, order, eventfilter.PassFilter},
		{"any fails when no child passes", `filters: [{any: [{exact: {type: x}}, {exact: {type: y}}]}]`, order, eventfilter.FailFilter},
		{"not inverts a pass", `filters: [{not: {exact: {type: com.koffeeshop.order.placed}}}]`, order, eventfilter.FailFilter},
		{"not inverts a fail", `filters: [{not: {exact: {type: com.koffeeshop.order.placed}}}]`, ready, eventfilter.PassFilter},
		{"cesql passes", `filters: [{cesql: "type LIKE 'com.koffeeshop.%' AND region = 'eu'"}]`, order, eventfilter.PassFilter},
		{"cesql fails", `filters: [{cesql: "region = 'us'"}]`, order, eventfilter.FailFilter},
		{"cesql on a missing attribute fails", `filters: [{cesql: "region = 'eu'"}]`, ready, eventfilter.FailFilter},
		{"cesql that is not boolean matches nothing (Knative's filter would panic)", `filters: [{cesql: "0"}]`, order, eventfilter.FailFilter},
		{"a list of filters is an implicit all", `filters: [{prefix: {type: com.koffeeshop.}}, {exact: {subject: o-2}}]`, order, eventfilter.FailFilter},
		{"nested not/any/all", `filters: [{not: {any: [{exact: {region: us}}, {all: [{exact: {region: eu}}, {prefix: {source: /warehouse}}]}]}}]`, order, eventfilter.PassFilter},
		{"filters win over filter.attributes", "filter: {attributes: {type: nope}}\nfilters: [{exact: {type: com.koffeeshop.order.placed}}]", order, eventfilter.PassFilter},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := &eventingv1.Trigger{}
			if err := yaml.UnmarshalStrict([]byte("broker: default\n"+tc.spec), &tr.Spec); err != nil {
				t.Fatal(err)
			}
			if fe := tr.Spec.Validate(context.Background()); fe != nil && !strings.Contains(fe.Error(), "subscriber") {
				t.Fatalf("Knative rejects the filter: %v", fe)
			}
			f, err := triggers.NewFilter(tr)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Filter(context.Background(), tc.event); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// TestUnparsableCESQLIsAnError: Knative's CESQL parser panics on some
// expressions that do not parse; a Trigger with one is an invalid filter,
// which the controller reports, not a panic that takes it down.
func TestUnparsableCESQLIsAnError(t *testing.T) {
	for _, expr := range []string{"type = ", "AND", "type LIKE"} {
		tr := &eventingv1.Trigger{Spec: eventingv1.TriggerSpec{Broker: "default", Filters: []eventingv1.SubscriptionsAPIFilter{{CESQL: expr}}}}
		if _, err := triggers.NewFilter(tr); err == nil {
			t.Errorf("cesql %q: no error", expr)
		}
	}
}
