//go:build faults

package runner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// startNATSCluster runs a three-node JetStream cluster of nats-server
// processes on loopback and waits until it can place an R3 stream.
func startNATSCluster(t *testing.T) []*natsProc {
	t.Helper()
	const size = 3
	var ports, cports []int
	var routes []string
	for range size {
		ports = append(ports, freePort(t))
		c := freePort(t)
		cports = append(cports, c)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", c))
	}
	var nodes []*natsProc
	for i := range size {
		nodes = append(nodes, startNATSProc(t, fmt.Sprintf("node%d", i+1), ports[i], t.TempDir(),
			"-cluster", fmt.Sprintf("nats://127.0.0.1:%d", cports[i]),
			"-routes", strings.Join(routes, ","),
			"-cluster_name", "ks"))
	}
	js := testkit.Connect(t, clusterURL(nodes))
	defer js.Conn().Close()
	// A meta leader, and every peer in: an R3 stream can be placed.
	testkit.Eventually(t, 90*time.Second, "the JetStream cluster formed", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "PROBE", Subjects: []string{"probe.>"}, Replicas: size, Storage: jetstream.MemoryStorage})
		if err == nil {
			err = js.DeleteStream(ctx, "PROBE")
		}
		return err
	})
	return nodes
}

func clusterURL(nodes []*natsProc) string {
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.URL())
	}
	return strings.Join(urls, ",")
}

// leaders maps the Broker's stream ("") and each Trigger's consumer to
// the node that leads it.
func leaders(t *testing.T, js jetstream.JetStream) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, broker.Ref{Namespace: "default", Name: "default"}.StreamName())
	if err != nil {
		t.Fatal(err)
	}
	si, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.Config.Replicas != 3 || si.Cluster == nil || len(si.Cluster.Replicas) != 2 {
		t.Fatalf("the Broker's stream is not R3: %d replicas configured, cluster %+v", si.Config.Replicas, si.Cluster)
	}
	out := map[string]string{"": si.Cluster.Leader}
	for ci := range st.ListConsumers(ctx).Info() {
		if ci.Config.Durable == "" {
			// The board's ordered consumer: ephemeral by design, it
			// holds nothing that must survive (the board rebuilds from
			// the stream). Every Trigger's consumer is durable.
			continue
		}
		if ci.Config.Replicas != 0 && ci.Config.Replicas != 3 || ci.Cluster == nil || len(ci.Cluster.Replicas) != 2 {
			t.Fatalf("consumer %s is not R3: %d replicas configured, cluster %+v", ci.Name, ci.Config.Replicas, ci.Cluster)
		}
		out[ci.Name] = ci.Cluster.Leader
	}
	return out
}

// moveLeaders makes node the leader of the Broker's stream and of every
// Trigger's consumer, with JetStream's leader step-down API.
func moveLeaders(t *testing.T, nc *nats.Conn, js jetstream.JetStream, node string) {
	t.Helper()
	stream := broker.Ref{Namespace: "default", Name: "default"}.StreamName()
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": node}})
	deadline := time.Now().Add(60 * time.Second)
	for {
		moved := true
		for name, leader := range leaders(t, js) {
			if leader == node {
				continue
			}
			moved = false
			subject := "$JS.API.STREAM.LEADER.STEPDOWN." + stream
			if name != "" {
				subject = "$JS.API.CONSUMER.LEADER.STEPDOWN." + stream + "." + name
			}
			if _, err := nc.Request(subject, req, 10*time.Second); err != nil {
				t.Logf("step down %s: %v", subject, err)
			}
		}
		if moved {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not move the leaders to %s: %v", node, leaders(t, js))
		}
		time.Sleep(time.Second)
	}
}

// failoverResumeBound bounds 202 → customer.notified for the orders
// accepted around the kill: the leader elections (about 5s) plus the time
// a Trigger takes to notice that its pull request died with the old
// consumer leader and to pull from the new one. A dispatcher that only
// notices by missing two of the pull's default 15s heartbeats takes 30s.
const failoverResumeBound = 20 * time.Second

// TestClusterKillOneNode: the Broker's stream and the Triggers' consumers
// are R3 on a three-node cluster. Their leaders are all moved to one node,
// not the one the runner is connected to, and that node is SIGKILLed under
// load: the cluster elects new leaders, the runner goes on without
// reconnecting, and every order that got a 202 reaches customer.notified,
// with no manual step.
func TestClusterKillOneNode(t *testing.T) {
	nodes := startNATSCluster(t)
	obs := newSink(t)
	cfg := faultConfig(t, "3s", obs.URL(), nil)
	s := startQuietShop(t, quietOptions{configDir: cfg, natsURL: clusterURL(nodes), replicas: 3})
	url := s.IngressURL() + "/default/default"

	js := testkit.Connect(t, clusterURL(nodes))
	nc := js.Conn()
	var victim *natsProc
	for _, n := range nodes {
		if !strings.HasSuffix(s.NATSURL(), fmt.Sprintf(":%d", n.port)) {
			victim = n
			break
		}
	}
	moveLeaders(t, nc, js, victim.name)
	t.Logf("leaders before the kill: %v; the runner is connected to %s", leaders(t, js), s.NATSURL())

	// Long enough after the kill to see the cluster elect new leaders
	// and the ingress accept again.
	const orders = 900
	l := startLoad(t, url, "cluster", orders, 15*time.Millisecond, 60*time.Second)
	l.waitSent(t, 200)
	victim.stop(syscall.SIGKILL)
	killedAt, killedAfter := time.Now(), l.sent()
	l.wait()
	var back time.Duration = -1
	for _, o := range l.snapshot() {
		if o.status == http.StatusAccepted && o.start.After(killedAt) && (back < 0 || o.end.Sub(killedAt) < back) {
			back = o.end.Sub(killedAt)
		}
	}
	if back < 0 {
		t.Errorf("the ingress accepted no order after %s was killed", victim.name)
	}

	res := tally(t, "cluster kill one node", fmt.Sprintf("SIGKILL of %s, leader of the R3 stream and of all 5 R3 consumers (the runner was connected to another node), of a three-node cluster after %d orders sent, not restarted; first 202 %s after the kill", victim.name, killedAfter, back.Round(time.Millisecond)), l, obs, 120*time.Second)
	if res.lost > 0 {
		logConsumers(t, clusterURL(nodes))
	}
	after := leaders(t, js)
	t.Logf("leaders after the kill: %v", after)
	for name, leader := range after {
		if leader == "" || leader == victim.name {
			t.Errorf("%q has no live leader after the kill: %q", name, leader)
		}
	}
	if worst := percentile(res.latencies, 100); worst > failoverResumeBound {
		t.Errorf("an order took %s from its 202 to customer.notified: the Triggers resumed too late after the failover", worst)
	}
}
