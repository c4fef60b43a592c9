package broker_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// BenchmarkIngress measures durable ingest (HTTP in, JetStream ack, 202 out)
// beside its two limits measured in the same run: the same HTTP load on a
// no-op handler, and raw JetStream publishes from a Go client.
func BenchmarkIngress(b *testing.B) {
	env := startBroker(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var seq atomic.Int64
	post := func(b *testing.B, url string) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				n := seq.Add(1)
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"customer":"ada","beverage":"latte"}`))
				req.Header.Set("ce-specversion", "1.0")
				req.Header.Set("ce-id", fmt.Sprint(n))
				req.Header.Set("ce-source", "/bench")
				req.Header.Set("ce-type", "com.koffeeshop.order.placed")
				req.Header.Set("content-type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
	b.Run("ingress", func(b *testing.B) { post(b, env.url+"/default/default") })
	b.Run("baseline=noop-http", func(b *testing.B) {
		noop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusAccepted)
		}))
		defer noop.Close()
		post(b, noop.URL)
	})
	b.Run("baseline=jetstream-publish", func(b *testing.B) {
		js := testkit.Connect(b, env.natsURL)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				n := seq.Add(1)
				msg := &nats.Msg{Subject: env.ref.TypeSubject("com.koffeeshop.order.placed"), Data: []byte(`{"customer":"ada","beverage":"latte"}`), Header: nats.Header{}}
				if _, err := js.PublishMsg(context.Background(), msg, jetstream.WithMsgID(fmt.Sprint("raw-", n))); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
