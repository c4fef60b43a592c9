package cluster_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// serving plays Knative Serving's part, which cannot run here: there is no
// kubelet to run a Revision's pods. For a Knative Service it starts the
// function's binary on a loopback port and, once the function answers its
// readiness probe, writes that address into the Service's status with the
// Ready conditions, as Serving does when its pods are ready. Knative's
// resolver, in the Broker class's controller, then resolves the Service
// to that address like any Addressable.
type serving struct {
	client servingclient.Interface
	bins   string
	env    []string // for every function, e.g. K_SINK
}

// serve runs the function of the Knative Service ns/name and returns its
// address.
func (sv *serving) serve(t *testing.T, ns, name string, env ...string) string {
	t.Helper()
	return sv.serveAs(t, ns, name, name, env...)
}

// serveAs runs the binary bin for the Knative Service ns/name.
func (sv *serving) serveAs(t *testing.T, ns, name, bin string, env ...string) string {
	t.Helper()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	env = append(append([]string{"PORT=" + itoa(port), "K_SERVICE=" + name, "BREW_TIME=0s"}, sv.env...), env...)
	start(t, name, filepath.Join(sv.bins, bin), env)
	waitHTTP(t, "http://"+addr+"/health/readiness", 30*time.Second)
	sv.markReady(t, ns, name, addr)
	return "http://" + addr
}

// markReady writes addr into the Service's status as Serving would.
func (sv *serving) markReady(t *testing.T, ns, name, addr string) {
	t.Helper()
	ctx := context.Background()
	for attempt := 0; ; attempt++ {
		ksvc, err := sv.client.ServingV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Knative Service %s/%s: %v", ns, name, err)
		}
		u := apis.HTTP(addr)
		ksvc.Status.URL = u
		ksvc.Status.Address = &duckv1.Addressable{URL: u}
		ksvc.Status.ObservedGeneration = ksvc.Generation
		ksvc.Status.Conditions = nil
		for _, c := range []apis.ConditionType{servingv1.ServiceConditionConfigurationsReady, servingv1.ServiceConditionRoutesReady, apis.ConditionReady} {
			ksvc.Status.SetConditions(append(ksvc.Status.GetConditions(), apis.Condition{Type: c, Status: "True", LastTransitionTime: apis.VolatileTime{Inner: metav1.Now()}}))
		}
		_, err = sv.client.ServingV1().Services(ns).UpdateStatus(ctx, ksvc, metav1.UpdateOptions{})
		if err == nil {
			return
		}
		if attempt > 5 {
			t.Fatalf("status of Knative Service %s/%s: %v", ns, name, err)
		}
	}
}

// waitHTTP waits until url answers 200.
func waitHTTP(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, url+" answering 200", func() error { return testkit.GetOK(url) })
}
