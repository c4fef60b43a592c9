package broker_test

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/koffeeshop/koffeeshop/broker"
)

// The names below are stored in JetStream by every version so far: a
// change to any of them strands the events and consumers already there.
func TestNamesAreStable(t *testing.T) {
	for _, c := range []struct {
		ref           broker.Ref
		stream, subj  string
		typ, typeSubj string
		trigger       string
		consumer      string
	}{
		{
			ref: broker.Ref{Namespace: "default", Name: "default"}, stream: "KNATIVE_BROKER_default_default", subj: "knative.broker.default.default.*",
			typ: "com.koffeeshop.order.placed", typeSubj: "knative.broker.default.default.com_koffeeshop_order_placed",
			trigger: "take-order", consumer: "trigger_default_take-order",
		},
		{
			ref: broker.Ref{Namespace: "coffee-shop", Name: "orders.v2"}, stream: "KNATIVE_BROKER_coffee-shop_orders_v2", subj: "knative.broker.coffee-shop.orders_v2.*",
			typ: "order placed>*", typeSubj: "knative.broker.coffee-shop.orders_v2.order_placed__",
			trigger: "notify.customer", consumer: "trigger_coffee-shop_notify_customer",
		},
		{
			ref: broker.Ref{Namespace: "shop", Name: "b1"}, stream: "KNATIVE_BROKER_shop_b1", subj: "knative.broker.shop.b1.*",
			typ: "", typeSubj: "knative.broker.shop.b1._",
			trigger: "0prepare-beverage", consumer: "trigger_shop_0prepare-beverage",
		},
		{
			ref: broker.Ref{Namespace: "shop", Name: "b1"}, stream: "KNATIVE_BROKER_shop_b1", subj: "knative.broker.shop.b1.*",
			typ: "com.koffeeshop." + strings.Repeat("x", 200), typeSubj: "knative.broker.shop.b1.h_ade9bb7aa1853f8a26d3869871db5e55",
			trigger: "a", consumer: "trigger_shop_a",
		},
	} {
		if got := c.ref.String(); got != c.ref.Namespace+"/"+c.ref.Name {
			t.Errorf("%v: String = %q", c.ref, got)
		}
		if got := c.ref.StreamName(); got != c.stream {
			t.Errorf("%s: StreamName = %q, want %q", c.ref, got, c.stream)
		}
		if got := c.ref.Subject(); got != c.subj {
			t.Errorf("%s: Subject = %q, want %q", c.ref, got, c.subj)
		}
		if got := c.ref.TypeSubject(c.typ); got != c.typeSubj {
			t.Errorf("%s: TypeSubject(%.30q) = %q, want %q", c.ref, c.typ, got, c.typeSubj)
		}
		trigger := types.NamespacedName{Namespace: c.ref.Namespace, Name: c.trigger}
		if got := broker.ConsumerName(trigger); got != c.consumer {
			t.Errorf("%s: ConsumerName = %q, want %q", trigger, got, c.consumer)
		}
	}
}
