package board_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/board"
)

// TestFollowReadsTheStreamAndRebuildsAfterARestart: the board follows the
// Broker's stream in process, ignores other event types, and a board made
// anew (the runner restarted) shows the same orders from the stream.
func TestFollowReadsTheStreamAndRebuildsAfterARestart(t *testing.T) {
	js := testkit.JetStream(t)
	ref := broker.Ref{Namespace: "default", Name: "default"}
	if _, err := broker.EnsureStream(t.Context(), js, ref, broker.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := broker.NewStore(js.Conn(), 0)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(e cloudevents.Event) {
		t.Helper()
		if _, err := store.Publish(t.Context(), ref, &e); err != nil {
			t.Fatal(err)
		}
	}
	follow := func() (*board.Board, func()) {
		b := newBoard(t)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- b.Follow(ctx, js, ref) }()
		return b, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("follow: %v", err)
			}
		}
	}
	waitCounts := func(b *board.Board, want map[string]int) {
		t.Helper()
		testkit.Eventually(t, 10*time.Second, "board stages", func() error {
			got := b.Counts()
			for k, v := range want {
				if got[k] != v {
					return fmt.Errorf("%v, want %v", got, want)
				}
			}
			return nil
		})
	}

	b, stop := follow()
	for i := range 3 {
		publish(event(t, fmt.Sprint("a-", i), coffee.TypeOrderAccepted, cloudevents.ApplicationJSON, coffee.Ready{OrderID: fmt.Sprint("o-", i), Customer: "ada", Beverage: "latte"}))
	}
	publish(event(t, "n-0", coffee.TypeCustomerNotified, cloudevents.ApplicationJSON, coffee.Ready{OrderID: "o-0", Customer: "ada", Beverage: "latte"}))
	publish(event(t, "x-0", "com.example.other", cloudevents.ApplicationJSON, coffee.Ready{OrderID: "o-9"}))
	waitCounts(b, map[string]int{"accepted": 2, "notified": 1})
	stop()

	again, stop := follow()
	defer stop()
	waitCounts(again, map[string]int{"accepted": 2, "notified": 1})
	if got := len(snapshot(t, again)); got != 3 {
		t.Fatalf("rebuilt board has %d orders, want 3", got)
	}
}
