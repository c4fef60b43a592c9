package reconciler_test

import (
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	et "knative.dev/eventing/pkg/reconciler/testing/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/triggers/reconciler"
)

// TestFilter checks the class filter of the Trigger informer and of
// leader promotion: the generated Trigger reconciler adds its finalizer to
// any Trigger it is handed, so a Trigger on another class's Broker must
// never reach it.
func TestFilter(t *testing.T) {
	ours := et.NewBroker("ours", testNS, et.WithBrokerClass(brokerreconciler.ClassName))
	theirs := et.NewBroker("theirs", testNS, et.WithBrokerClass("MTChannelBasedBroker"))
	elsewhere := et.NewBroker("ours", "shop", et.WithBrokerClass(brokerreconciler.ClassName))
	listers := et.NewListers([]runtime.Object{ours, theirs, elsewhere})
	filter := reconciler.Filter(listers.GetBrokerLister())

	for _, tc := range []struct {
		name string
		obj  any
		want bool
	}{
		{"a Trigger on our Broker", et.NewTrigger("t", testNS, "ours"), true},
		{"a Trigger on another class's Broker", et.NewTrigger("t", testNS, "theirs"), false},
		{"a Trigger on a Broker that does not exist", et.NewTrigger("t", testNS, "missing"), false},
		{"our Trigger whose Broker is gone, to be finalized", et.NewTrigger("t", testNS, "missing", func(t *eventingv1.Trigger) {
			t.Finalizers = []string{reconciler.FinalizerName}
		}), true},
		{"another controller's finalizer does not make a Trigger ours", et.NewTrigger("t", testNS, "theirs", func(t *eventingv1.Trigger) {
			t.Finalizers = []string{"triggers.eventing.knative.dev"}
		}), false},
		{"a brokerRef to our Broker in another namespace", et.NewTriggerWithBrokerRef("t", testNS, func(t *eventingv1.Trigger) {
			t.Spec.BrokerRef = &duckv1.KReference{APIVersion: "eventing.knative.dev/v1", Kind: "Broker", Namespace: "shop", Name: "ours"}
		}), true},
		{"not a Trigger", ours, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := filter(tc.obj); got != tc.want {
				t.Errorf("Filter = %v, want %v", got, tc.want)
			}
		})
	}
}
