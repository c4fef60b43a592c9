package triggers_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	kbroker "knative.dev/eventing/pkg/broker"
	"knative.dev/eventing/pkg/eventfilter"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// TestFilterSeesWhatKnativeSees: the dispatcher decodes only what a filter
// reads, yet every filter answers as Knative's own filter does on the whole
// stored event (without the broker's TTL), for the attributes Knative
// reads under another name (schemaurl and dataschema, datamediatype) and
// for 0.3 and 1.0 events.
func TestFilterSeesWhatKnativeSees(t *testing.T) {
	filters := []string{
		"filter: {attributes: {schemaurl: 'http://example.com/schema'}}",
		"filter: {attributes: {dataschema: 'http://example.com/schema'}}",
		"filters: [{exact: {datamediatype: application/json}}]",
		"filters: [{not: {exact: {datamediatype: application/json}}}]",
		"filters: [{prefix: {datacontenttype: application/json}}]",
		"filters: [{exact: {schemaurl: 'http://example.com/schema'}}]",
		"filters: [{exact: {knativebrokerttl: '255'}}]",
		"filters: [{exact: {subject: s1}}, {suffix: {source: '/v03'}}]",
		"filters: [{any: [{exact: {color: red}}, {exact: {specversion: '0.3'}}]}]",
	}
	ev := func(id, version string, schema bool) cloudevents.Event {
		e := newEvent(id, "com.example.parity")
		e.SetSpecVersion(version)
		e.SetSource("/v" + map[string]string{"1.0": "10", "0.3": "03"}[version])
		e.SetSubject("s1")
		_ = e.SetData("application/json; charset=utf-8", []byte(`{"n":1}`))
		if schema {
			e.SetDataSchema("http://example.com/schema")
			e.SetExtension("color", "red")
		}
		return e
	}
	for i, f := range filters {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			h := newHarness(t)
			sub := newSubscriber(t)
			tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  %s\n  subscriber: {uri: '%s'}\n", f, sub.URL))
			d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL)}, nil)
			for j, e := range []cloudevents.Event{ev("a", "1.0", true), ev("b", "0.3", true), ev("c", "1.0", false), ev("d", "0.3", false)} {
				e.SetID(fmt.Sprint("e", i, "-", j))
				h.publish(e)
			}
			h.settled(d, 10*time.Second)
			knative, err := triggers.NewFilter(tr)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for _, a := range sub.got() {
				got[a.event.ID()] = true
			}
			for _, m := range h.storedMsgs() {
				full, err := broker.Decode(m.Header, m.Data)
				if err != nil {
					t.Fatal(err)
				}
				_ = kbroker.DeleteTTL(full.Context)
				want := knative.Filter(context.Background(), full) != eventfilter.FailFilter
				if got[full.ID()] != want {
					st := d.Stats()
					t.Errorf("%s: event %s (%s) delivered %v, Knative's filter on the whole event says %v (dispatcher: %d delivered, %d filtered, drops %v)",
						f, full.ID(), full.SpecVersion(), got[full.ID()], want, st.Delivered.Load(), st.Filtered.Load(), st.Drops())
				}
			}
		})
	}
}
