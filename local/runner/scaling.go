package runner

import (
	"time"

	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	autoscalerconfig "knative.dev/serving/pkg/autoscaler/config"
	"knative.dev/serving/pkg/reconciler/autoscaling/resources"

	"github.com/koffeeshop/koffeeshop/local/supervisor"
)

// scalingFor resolves a Service's autoscaling.knative.dev annotations with
// Knative Serving's own code, against the defaults of config-autoscaler:
// the concurrency target (target × target-utilization-percentage, at most
// containerConcurrency), min-scale and max-scale, the stable and panic
// windows and the panic threshold.
//
// Two local choices: with no initial-scale a Service starts at min-scale,
// so a Service at min-scale 0 has no process until its first event (Knative
// would start one and then scale it away); and the idle window after which
// the last instance stops is scale-to-zero-pod-retention-period when set,
// else the stable window.
func scalingFor(svc *servingv1.Service) (supervisor.Scaling, error) {
	cfg, err := autoscalerconfig.NewConfigFromMap(nil)
	if err != nil {
		return supervisor.Scaling{}, fmt.Errorf("autoscaler defaults: %w", err)
	}
	pa := &autoscalingv1alpha1.PodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Annotations: svc.Spec.Template.Annotations},
		Spec:       autoscalingv1alpha1.PodAutoscalerSpec{Reachability: autoscalingv1alpha1.ReachabilityReachable},
	}
	if cc := svc.Spec.Template.Spec.ContainerConcurrency; cc != nil {
		pa.Spec.ContainerConcurrency = *cc
	}
	target, total := resources.ResolveMetricTarget(pa, cfg)
	minScale, maxScale := pa.ScaleBounds(cfg)
	s := supervisor.Scaling{
		MinScale:       int(minScale),
		MaxScale:       int(maxScale),
		InitialScale:   int(minScale),
		Target:         target,
		Total:          total,
		StableWindow:   cfg.StableWindow,
		PanicThreshold: cfg.PanicThresholdPercentage / 100,
	}
	if n, ok := pa.InitialScale(); ok {
		s.InitialScale = int(n)
	}
	if n, ok := pa.ActivationScale(); ok {
		s.ActivationScale = int(n)
	}
	if w, ok := pa.Window(); ok {
		s.StableWindow = w
	}
	pwp := cfg.PanicWindowPercentage
	if v, ok := pa.PanicWindowPercentage(); ok {
		pwp = v
	}
	s.PanicWindow = max(time.Duration(float64(s.StableWindow)*pwp/100), time.Second)
	if v, ok := pa.PanicThresholdPercentage(); ok {
		s.PanicThreshold = v / 100
	}
	s.IdleWindow = s.StableWindow
	if r, ok := pa.ScaleToZeroPodRetention(); ok && r > 0 {
		s.IdleWindow = r
	}
	return s, nil
}
