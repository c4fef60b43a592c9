package broker_test

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/httpserver"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// TestSlowHeadersAreCutOff: a client that trickles its headers (slowloris)
// is disconnected once ReadHeaderTimeout has passed, while the ingress
// goes on answering others.
func TestSlowHeadersAreCutOff(t *testing.T) {
	env := startBroker(t)
	log := slog.New(slog.DiscardHandler)
	const limit = 500 * time.Millisecond
	srv := httpserver.New(broker.NewIngress(env.store, broker.NewBrokerSet(env.ref), log, broker.IngressOptions{}),
		httpserver.Options{ReadHeaderTimeout: limit})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	url := "http://" + ln.Addr().String() + "/default/default"

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, "POST /default/default HTTP/1.1\r\nHost: koffeeshop\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	closed := make(chan time.Duration, 1)
	go func() {
		_, _ = io.Copy(io.Discard, conn) // returns when the server closes
		closed <- time.Since(start)
	}()
	// Trickle a byte every 100 ms for up to 5 s, answering others between.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	served := 0
	for i := 0; ; i++ {
		select {
		case d := <-closed:
			// The server's clock starts at accept, a little before ours.
			if d < limit-100*time.Millisecond || d > limit+time.Second {
				t.Fatalf("the trickling connection was closed after %s, want about %s", d, limit)
			}
			if served == 0 {
				t.Fatal("no other request was answered meanwhile")
			}
			return
		case <-tick.C:
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("the trickling connection is still open after 5 s")
		}
		if _, err := conn.Write([]byte("a")); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			continue // closed under us: the reader reports when
		}
		resp, body := testkit.Post(t, url, binaryHeaders("slow-"+time.Now().Format("150405.000000"), nil), `{}`)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("a normal request during the trickle: %d %s", resp.StatusCode, body)
		}
		served++
	}
}
