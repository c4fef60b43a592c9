package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
)

func order(ctx context.Context, e *env, args []string) int {
	f := newFlags(e, "order", "--customer NAME --beverage BEVERAGE [--wait]",
		"Places an order: a "+coffee.TypeOrderPlaced+" event to the Broker. With --wait it\nfollows the order on the shop's board to notified, rejected or failed, printing each\nstep with its time since the order; it exits 1 when the order is rejected or fails.")
	var (
		customer, beverage string
		wait               bool
		timeout            time.Duration
	)
	f.StringVar(&customer, "customer", "", "who orders (required)")
	f.StringVar(&beverage, "beverage", "", "what, from the menu: "+strings.Join(coffee.Menu(), ", ")+" (required)")
	f.BoolVar(&wait, "wait", false, "follow the order to its end")
	f.DurationVar(&timeout, "timeout", time.Minute, "how long to wait, with --wait")
	if code, ok := f.parse(e, args); !ok {
		return code
	}
	if customer == "" || beverage == "" {
		return usage(e, f, "--customer and --beverage are required")
	}
	data, _ := json.Marshal(coffee.Order{Customer: customer, Beverage: beverage})
	ev, code := buildEvent(e, f, coffee.TypeOrderPlaced, "/koffeeshop-cli", "", string(data), "application/json", "", nil)
	if code != OK {
		return code
	}
	orderID := coffee.OrderID(ev)

	var steps <-chan step
	if wait {
		// Follow before placing, so that no step is missed.
		wctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var err error
		if steps, err = follow(wctx, f.addr, orderID); err != nil {
			return fail(e, "order", "follow the order: %v", err)
		}
	}
	req, err := binaryRequest(ctx, f.brokerURL(), &ev)
	if err != nil {
		return fail(e, "order", "%v", err)
	}
	start := time.Now()
	status, msg, err := post(req, f.token, 10*time.Second)
	if err != nil {
		return fail(e, "order", "%v", err)
	}
	if status/100 != 2 {
		return fail(e, "order", "%d %s: %s", status, http.StatusText(status), msg)
	}
	fmt.Fprintf(e.stdout, "order %s placed for %s: %s (%d)\n", orderID, customer, beverage, status)
	if !wait {
		return OK
	}
	seen := ""
	for s := range steps {
		if s.Stage == seen {
			continue
		}
		seen = s.Stage
		line := fmt.Sprintf("%8s  %s", "+"+time.Since(start).Round(time.Millisecond).String(), s.Stage)
		if s.Barista != "" {
			line += " by " + s.Barista
		}
		if s.Reason != "" {
			line += ": " + s.Reason
		}
		fmt.Fprintln(e.stdout, line)
		switch s.Stage {
		case "notified":
			return OK
		case "rejected", "failed":
			return Refused
		}
	}
	return fail(e, "order", "order %s did not end within %s (last: %q)", orderID, timeout, seen)
}

// step is an order as the board's event stream shows it.
type step struct {
	OrderID, Stage, Barista, Reason string
}

// follow reads the board's event stream and sends the steps of one order
// until ctx is done; the channel closes then.
func follow(ctx context.Context, addr, orderID string) (<-chan step, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr+"/_board/events", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s (the board runs with make run, not with -only)", req.URL, resp.Status)
	}
	out := make(chan step)
	go func() {
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		event := ""
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "event: "); ok {
				event = v
				continue
			}
			data, ok := strings.CutPrefix(line, "data: ")
			if !ok || event != "order" {
				continue
			}
			var s step
			if json.Unmarshal([]byte(data), &s) != nil || s.OrderID != orderID {
				continue
			}
			select {
			case out <- s:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
