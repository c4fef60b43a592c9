package kubeapi_test

import (
	"context"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventingclient "knative.dev/eventing/pkg/client/clientset/versioned"

	"github.com/koffeeshop/koffeeshop/local/kubeapi"
)

// TestAPIServerServesKnativeObjects: the harness's API server stores a
// Knative Broker through its CRD, answers through the kubeconfig it
// wrote, enforces authentication, and leaves no process behind.
func TestAPIServerServesKnativeObjects(t *testing.T) {
	s := kubeapi.ForTest(t)
	ctx := context.Background()

	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kube := kubernetes.NewForConfigOrDie(cfg)
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev := eventingclient.NewForConfigOrDie(cfg)
	b := &eventingv1.Broker{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "shop",
		Annotations: map[string]string{"eventing.knative.dev/broker.class": "KoffeeshopJetStream"}}}
	if _, err := ev.EventingV1().Brokers("shop").Create(ctx, b, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := ev.EventingV1().Brokers("shop").Get(ctx, "default", metav1.GetOptions{})
	if err != nil || got.Annotations["eventing.knative.dev/broker.class"] != "KoffeeshopJetStream" {
		t.Fatalf("read back %v, %v", got, err)
	}

	anon := *s.Config
	anon.BearerToken = "wrong"
	if _, err := kubernetes.NewForConfigOrDie(&anon).CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("a wrong token was let in")
	}

	pids := s.PIDs()
	s.Stop()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("process %d is still there after Stop (%v)", pid, err)
		}
	}
}
