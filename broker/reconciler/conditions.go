package reconciler

import (
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/pkg/apis"
)

// ClassName is the eventing.knative.dev/broker.class of the Brokers this
// control plane runs; Brokers of any other class are left to their own
// controllers.
const ClassName = "KoffeeshopJetStream"

// ClassAnnotationKey is the annotation that carries a Broker's class.
const ClassAnnotationKey = "eventing.knative.dev/broker.class"

// FinalizerName keeps a Broker until its stream is deleted. It is our own
// rather than the generated reconciler's default (brokers.eventing.knative.dev),
// which every Broker controller shares.
const FinalizerName = "koffeeshop.dev/broker-stream"

// The Broker conditions besides Knative's Addressable and
// DeadLetterSinkResolved.
const (
	// ConditionConfigParsed is True when spec.config is unset (the
	// defaults apply) or names a ConfigMap that exists and holds valid
	// stream settings.
	ConditionConfigParsed apis.ConditionType = "ConfigParsed"
	// ConditionStreamReady is True when the Broker's JetStream stream
	// exists with those settings.
	ConditionStreamReady apis.ConditionType = "StreamReady"
)

// ConditionSet is the lifecycle of a Broker of this class: Ready is True
// when ConfigParsed, StreamReady, Addressable and DeadLetterSinkResolved
// all are.
//
// It replaces Knative's default Broker condition set, whose IngressReady,
// TriggerChannelReady and FilterReady describe the channel-based Broker's
// own Deployments and Channel, and whose EventPoliciesReady reports OIDC
// authorization. This class has no Channel and no per-Broker Deployments
// (one shared ingress serves every Broker), and it does not enforce
// EventPolicies, so those conditions could only be set True without
// anything behind them. What can fail here is the configuration and the
// stream, so those are the conditions. Addressable and
// DeadLetterSinkResolved keep Knative's names, so BrokerStatus's own
// SetAddress and MarkDeadLetterSink* methods set them.
//
// Knative Eventing holds one Broker condition set per process
// (eventingv1.RegisterAlternateBrokerConditionSet); NewController
// registers this one, as eventing-kafka-broker does with its own.
var ConditionSet = apis.NewLivingConditionSet(
	ConditionConfigParsed,
	ConditionStreamReady,
	eventingv1.BrokerConditionAddressable,
	eventingv1.BrokerConditionDeadLetterSinkResolved,
)

// Reasons of the conditions this reconciler sets False.
const (
	// ReasonConfigMapNotFound: spec.config names a ConfigMap that does not exist.
	ReasonConfigMapNotFound = "ConfigMapNotFound"
	// ReasonUnsupportedConfig: spec.config names something other than a ConfigMap.
	ReasonUnsupportedConfig = "UnsupportedConfig"
	// ReasonInvalidConfig: the ConfigMap holds a value that cannot be used.
	ReasonInvalidConfig = "InvalidConfig"
	// ReasonConfigUnavailable: the ConfigMap could not be read (retried).
	ReasonConfigUnavailable = "ConfigUnavailable"
	// ReasonNATSUnavailable: NATS could not be reached or did not answer in time.
	ReasonNATSUnavailable = "NATSUnavailable"
	// ReasonStreamFailed: JetStream answered and refused the stream.
	ReasonStreamFailed = "StreamFailed"
	// ReasonDeadLetterSinkResolveFailed: spec.delivery.deadLetterSink has no URL.
	ReasonDeadLetterSinkResolveFailed = "DeadLetterSinkResolveFailed"
)
