// Package cluster holds the end-to-end test of the cluster path: the
// KoffeeshopJetStream Broker class's controller and data plane as
// processes against a real kube-apiserver and etcd (local/kubeapi) and a
// real JetStream, with the shop's manifests from config/ applied through
// the API.
package cluster
