package runner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/board"
	"github.com/koffeeshop/koffeeshop/local/traces"
)

// chromium finds a Chromium to drive: $CHROMIUM, else Debian's package.
func chromium() string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestBoardInChromium places orders through the web form by both paths in
// a real headless Chromium and watches the board: each order reaches
// notified, an order take-order refuses shows as failed with its reason,
// and the panel shows prepare-beverage going 0, then at least 1, then 0
// again.
func TestBoardInChromium(t *testing.T) {
	chrome := chromium()
	if chrome == "" {
		t.Skip("no Chromium on this machine: install Debian's chromium package (.ci/run does) or set CHROMIUM")
	}
	s := startShopWith(t, shopOptions{
		configDir: scaledConfig(t, retention("1s")...),
		env:       map[string][]string{"prepare-beverage": {"BREW_TIME=600ms"}},
	})

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1200, 900),
	)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 120*time.Second)
	defer cancelTimeout()

	const probe = `(() => {
		const stage = c => { const r = document.querySelector('tr[data-customer="' + c + '"]'); return r ? r.dataset.stage : ""; };
		const p = document.querySelector('[data-service="prepare-beverage"]');
		return [stage("ada"), stage("grace"), p ? p.dataset.instances : ""];
	})()`
	look := func() (ada, grace, instances string) {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](probe))
		if err != nil {
			t.Fatalf("read the board: %v", err)
		}
		return v[0], v[1], v[2]
	}

	if err := chromedp.Do(ctx,
		chromedp.Navigate(s.BoardURL()),
		chromedp.WaitVisible(`[data-service="prepare-beverage"]`),
		// The form's beverages come from the shop's menu.
		chromedp.WaitReady(`#beverage option[value="flat-white"]`),
	); err != nil {
		t.Fatalf("open the board at %s: %v", s.BoardURL(), err)
	}
	if _, _, n := look(); n != "0" {
		t.Fatalf("prepare-beverage shows %q instances before any order, want 0", n)
	}

	order := func(customer, beverage, button, wantStatus string) {
		t.Helper()
		if err := chromedp.Do(ctx,
			chromedp.SetValue(`#customer`, customer),
			chromedp.SetValue(`#beverage`, beverage),
			chromedp.Click(button),
			chromedp.WaitVisible(`#last-result[data-status="`+wantStatus+`"]`),
			chromedp.Evaluate[chromedp.Void](`document.getElementById("last-result").removeAttribute("data-status")`),
		); err != nil {
			t.Fatalf("order for %s via %s: %v", customer, button, err)
		}
	}
	order("ada", "latte", `#via-broker`, "202")
	order("grace", "mocha", `#via-direct`, "200")

	sawBarista := false
	testkit.Eventually(t, 60*time.Second, "ada and grace notified on the board", func() error {
		ada, grace, n := look()
		if n != "" && n != "0" {
			sawBarista = true
		}
		if ada != "notified" || grace != "notified" {
			return fmt.Errorf("the board shows ada %q and grace %q", ada, grace)
		}
		return nil
	})
	// An order take-order cannot read is dead-lettered, turned into
	// order.failed by notify, and shows as failed with take-order's reason.
	refused := cloudevents.NewEvent()
	refused.SetID("refused-in-chromium")
	refused.SetSource("/board-test")
	if resp, _ := testkit.PostBinary(t, s.IngressURL()+"/default/default", testkit.Event(refused.ID(), refused.Source(), coffee.TypeOrderPlaced, `"latte"`)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("refused order: %d", resp.StatusCode)
	}
	row := `tr[data-order-id="` + coffee.OrderID(refused) + `"]`
	var reason string
	testkit.Eventually(t, 60*time.Second, "the refused order failed on the board", func() error {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`(() => { const r = document.querySelector('`+row+`'); return r ? [r.dataset.stage, r.dataset.reason] : ["", ""]; })()`))
		if err != nil {
			t.Fatalf("read the board: %v", err)
		}
		if reason = v[1]; v[0] != "failed" {
			return fmt.Errorf("it shows %q", v[0])
		}
		return nil
	})
	if !strings.Contains(reason, "invalid order") {
		t.Errorf("the failed order's reason is %q, want take-order's refusal", reason)
	}

	// ada's timeline: one trace across the three functions, the time
	// queued in JetStream apart, and the cold starts of functions that
	// were at zero.
	if err := chromedp.Do(ctx, chromedp.Click(`tr[data-customer="ada"] button.show-trace`)); err != nil {
		t.Fatalf("open ada's timeline: %v", err)
	}
	const timeline = `(() => {
		const rows = Array.from(document.querySelectorAll('#waterfall .span'));
		const fns = rows.filter(r => r.dataset.kind === "function").map(r => r.dataset.service).sort();
		const kinds = new Set(rows.map(r => r.dataset.kind));
		const bars = rows.filter(r => parseFloat(r.querySelector('.bar').style.width) > 0).length;
		const first = rows.length ? rows[0].querySelector('.label').textContent : "";
		return [fns.join(","), String(kinds.has("queued")), String(kinds.has("coldstart")), String(bars), document.getElementById("timeline-summary").textContent, first];
	})()`
	var tl []string
	testkit.Eventually(t, 30*time.Second, "ada's timeline with the three functions, a queued span and a cold start", func() error {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](timeline))
		if err != nil {
			t.Fatalf("read the timeline: %v", err)
		}
		if tl = v; tl[0] != "notify,prepare-beverage,take-order" || tl[1] != "true" || tl[2] != "true" {
			return fmt.Errorf("it shows functions %q, queued %s, cold start %s", tl[0], tl[1], tl[2])
		}
		return nil
	})
	if !strings.Contains(tl[4], "queued in JetStream") || tl[3] == "0" {
		t.Errorf("timeline summary %q with %s bars", tl[4], tl[3])
	}
	// The trace starts where the order was placed: the board's form.
	if !strings.HasSuffix(tl[5], ": board order via broker") {
		t.Errorf("ada's timeline starts with %q, want the board's order via broker", tl[5])
	}
	// grace's order went to take-order directly: the same, one trace from
	// the form on.
	graceTrace, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('tr[data-customer="grace"]').dataset.traceId || ""`))
	if err != nil {
		t.Fatalf("read grace's trace id: %v", err)
	}
	if spans := boardTrace(t, s.IngressURL(), graceTrace); len(spans) == 0 || spans[0].Name != "board order via direct" || spans[0].ParentID != "" {
		t.Errorf("grace's trace %q begins with %+v, want the board's order via direct as its root", graceTrace, spans)
	} else if !traceHas(spans, "take-order", spans[0].SpanID) {
		t.Errorf("grace's trace %q has no take-order span under the board's order: %+v", graceTrace, spans)
	}
	screenshot(t, ctx, "board.png")
	if !sawBarista {
		t.Error("the panel never showed a prepare-beverage instance while orders were brewing")
	}
	testkit.WaitFor(t, 20*time.Second, "the panel showing prepare-beverage back at 0 instances", func() bool {
		_, _, n := look()
		return n == "0"
	})
	// The chart shows prepare-beverage scaling out from zero and back to
	// zero: its instances line starts at the bottom (0), rises and comes
	// back down.
	const chart = `(() => {
		const l = document.querySelector('figure[data-service="prepare-beverage"] polyline.instances');
		if (!l) return "";
		const ys = (l.getAttribute("points") || "").trim().split(" ").filter(Boolean).map(p => parseFloat(p.split(",")[1]));
		const zero = y => y >= 57.9;
		const up = ys.findIndex(y => !zero(y));
		return up > 0 && zero(ys[up - 1]) && ys.slice(up).some(zero) ? "out and back" : ys.length + " samples";
	})()`
	testkit.Eventually(t, 20*time.Second, "the scale chart of prepare-beverage showing a scale-out from zero and back", func() error {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](chart))
		if err != nil {
			t.Fatalf("read the chart: %v", err)
		}
		if v != "out and back" {
			pts, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('figure[data-service="prepare-beverage"] polyline.instances').getAttribute("points")`))
			return fmt.Errorf("it shows %q (%s); history %+v", v, pts, s.History())
		}
		return nil
	})
	screenshot(t, ctx, "board-scaled-back.png")
}

// screenshot saves the page as name among the test's artifacts.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// boardTrace reads the spans of a trace as the board's timeline does,
// oldest first.
func boardTrace(t *testing.T, base, id string) []traces.Span {
	t.Helper()
	resp, err := http.Get(base + board.TracePath + id)
	if err != nil {
		t.Fatalf("GET trace %s: %v", id, err)
	}
	defer resp.Body.Close()
	var spans []traces.Span
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&spans); err != nil {
			t.Fatalf("decode trace %s: %v", id, err)
		}
	}
	return spans
}

// traceHas reports whether a span of service descends from the span
// root.
func traceHas(spans []traces.Span, service, root string) bool {
	parent := make(map[string]string, len(spans))
	for _, s := range spans {
		parent[s.SpanID] = s.ParentID
	}
	for _, s := range spans {
		if s.Service != service {
			continue
		}
		for id := s.ParentID; id != ""; id = parent[id] {
			if id == root {
				return true
			}
		}
	}
	return false
}
