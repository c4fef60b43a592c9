package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
)

func events(ctx context.Context, e *env, args []string) int {
	f := newFlags(e, "events", "[--type PREFIX] [--since DURATION|TIME] [--limit N]",
		"Tails a Broker's events from its JetStream stream, decoded, a line each: from now,\nor from --since ago (5m) or since a time (RFC 3339). It reads NATS at the address\nthe running shop reports (its /status), or at --nats.")
	var (
		prefix, since, natsURL string
		limit                  int
	)
	f.StringVar(&prefix, "type", "", "only events whose type starts with PREFIX")
	f.StringVar(&since, "since", "", "start that long ago (a duration: 10m) or at that time (RFC 3339)")
	f.StringVar(&natsURL, "nats", "", "the NATS server (default: the one the shop at --addr uses)")
	f.IntVar(&limit, "limit", 0, "stop after N events (0: run until interrupted)")
	if code, ok := f.parse(e, args); !ok {
		return code
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy}
	if since != "" {
		start, err := parseSince(since, time.Now())
		if err != nil {
			return usage(e, f, "--since: %v", err)
		}
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	if natsURL == "" {
		var err error
		if natsURL, err = shopNATS(ctx, f.addr); err != nil {
			return fail(e, "events", "%v (or give --nats)", err)
		}
	}
	ns, name, _ := strings.Cut(f.broker, "/")
	ref := broker.Ref{Namespace: ns, Name: name}
	nc, err := nats.Connect(natsURL, nats.Name("koffeeshop-events"))
	if err != nil {
		return fail(e, "events", "connect to NATS at %s: %v", natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(e, "events", "%v", err)
	}
	cons, err := js.OrderedConsumer(ctx, ref.StreamName(), cfg)
	if err != nil {
		return fail(e, "events", "read the stream of Broker %s: %v", ref, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fail(e, "events", "%v", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for n := 0; limit == 0 || n < limit; {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return OK
			}
			return fail(e, "events", "%v", err)
		}
		ev, err := broker.Decode(msg.Headers(), msg.Data())
		if err != nil {
			fmt.Fprintf(e.stdout, "(undecodable message: %v)\n", err)
			continue
		}
		if !strings.HasPrefix(ev.Type(), prefix) {
			continue
		}
		n++
		at := ev.Time()
		if meta, err := msg.Metadata(); err == nil {
			at = meta.Timestamp
		}
		line := fmt.Sprintf("%s  %s  id=%s  source=%s", at.Local().Format("15:04:05.000"), ev.Type(), ev.ID(), ev.Source())
		if ev.Subject() != "" {
			line += "  subject=" + ev.Subject()
		}
		if d := ev.Data(); len(d) > 0 {
			line += "  data=" + short(d)
		}
		fmt.Fprintln(e.stdout, line)
	}
	return OK
}

// parseSince reads a duration ago or a time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q is negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (10m) nor an RFC 3339 time", s)
	}
	return t, nil
}

// short is data on one line, at most 200 characters.
func short(d []byte) string {
	s := string(d)
	if !utf8.ValidString(s) {
		return fmt.Sprintf("(%d bytes, not text)", len(d))
	}
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}

// shopNATS asks the shop at addr which NATS server it uses.
func shopNATS(ctx context.Context, addr string) (string, error) {
	var st struct {
		NATS string `json:"nats"`
	}
	if err := getJSON(ctx, addr+"/status", &st); err != nil {
		return "", err
	}
	if st.NATS == "" {
		return "", fmt.Errorf("the shop at %s does not say which NATS it uses", addr)
	}
	return st.NATS, nil
}

func getJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("is the shop running? %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}
