package coffee_test

import (
	"encoding/json"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
)

func placed(t *testing.T, source, id string, data any) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource(source)
	e.SetType(coffee.TypeOrderPlaced)
	if err := e.SetData(cloudevents.ApplicationJSON, data); err != nil {
		t.Fatalf("set data: %v", err)
	}
	return e
}

func TestLookupBeverage(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"latte", "latte", true},
		{"  Flat-White ", "flat-white", true},
		{"flat white", "flat-white", true},
		{"Flat_White", "flat-white", true},
		{"flatwhite", "", false},
		{"TEA", "tea", true},
		{"xyz", "", false},
		{"", "", false},
		{"   ", "", false},
	} {
		got, ok := coffee.LookupBeverage(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("LookupBeverage(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	for _, name := range coffee.Menu() {
		if got, ok := coffee.LookupBeverage(name); !ok || got != name {
			t.Errorf("menu item %q not found by LookupBeverage: %q, %v", name, got, ok)
		}
	}
}

func TestMenuIsACopy(t *testing.T) {
	m := coffee.Menu()
	m[0] = "gin"
	if _, ok := coffee.LookupBeverage("gin"); ok {
		t.Fatal("mutating the returned menu changed the shop's menu")
	}
}

func TestOrderIDIsDeterministic(t *testing.T) {
	a := placed(t, "/web", "1", coffee.Order{Customer: "ada", Beverage: "latte"})
	again := placed(t, "/web", "1", coffee.Order{Customer: "someone else", Beverage: "tea"})
	otherID := placed(t, "/web", "2", coffee.Order{Customer: "ada", Beverage: "latte"})
	otherSource := placed(t, "/kiosk", "1", coffee.Order{Customer: "ada", Beverage: "latte"})

	id := coffee.OrderID(a)
	parsed, err := uuid.Parse(id)
	if err != nil {
		t.Fatalf("order id %q is not a UUID: %v", id, err)
	}
	if parsed.Version() != 5 {
		t.Errorf("order id version = %d, want 5", parsed.Version())
	}
	if got := coffee.OrderID(again); got != id {
		t.Errorf("same source and id gave %q then %q", id, got)
	}
	if got := coffee.OrderID(otherID); got == id {
		t.Errorf("different event id gave the same order id %q", got)
	}
	if got := coffee.OrderID(otherSource); got == id {
		t.Errorf("different source gave the same order id %q", got)
	}
}

func TestReplyIDSeparatesFields(t *testing.T) {
	base := coffee.ReplyID("/web", "1", coffee.TypeOrderAccepted)
	if got := coffee.ReplyID("/web", "1", coffee.TypeOrderAccepted); got != base {
		t.Errorf("ReplyID not deterministic: %q vs %q", base, got)
	}
	for _, other := range []string{
		coffee.ReplyID("/web", "1", coffee.TypeOrderRejected),
		coffee.ReplyID("/web", "2", coffee.TypeOrderAccepted),
		coffee.ReplyID("/web1", "", coffee.TypeOrderAccepted),
		coffee.ReplyID("/we", "b1", coffee.TypeOrderAccepted),
	} {
		if other == base {
			t.Errorf("different input produced the same reply id %q", base)
		}
	}
	if coffee.ReplyID("/web", "1", coffee.TypeOrderAccepted) == coffee.OrderID(placed(t, "/web", "1", nil)) {
		t.Error("reply id and order id collide")
	}
}

func TestNewReply(t *testing.T) {
	in := placed(t, "/web", "42", coffee.Order{Customer: "ada", Beverage: "latte"})
	data := coffee.Accepted{OrderID: "o-1", Customer: "ada", Beverage: "latte"}

	out, err := coffee.NewReply(in, "take-order", coffee.TypeOrderAccepted, "o-1", data)
	if err != nil {
		t.Fatalf("NewReply: %v", err)
	}
	if got, want := out.ID(), coffee.ReplyID("/web", "42", coffee.TypeOrderAccepted); got != want {
		t.Errorf("id = %q, want %q", got, want)
	}
	if got, want := out.Source(), "/koffeeshop/take-order"; got != want {
		t.Errorf("source = %q, want %q", got, want)
	}
	if got := out.Type(); got != coffee.TypeOrderAccepted {
		t.Errorf("type = %q", got)
	}
	if got := out.Subject(); got != "o-1" {
		t.Errorf("subject = %q, want o-1", got)
	}
	if got := out.DataContentType(); got != cloudevents.ApplicationJSON {
		t.Errorf("datacontenttype = %q", got)
	}
	if got := out.SpecVersion(); got != cloudevents.VersionV1 {
		t.Errorf("specversion = %q", got)
	}
	var got map[string]any
	if err := json.Unmarshal(out.Data(), &got); err != nil {
		t.Fatalf("reply data %q: %v", out.Data(), err)
	}
	if got["orderId"] != "o-1" || got["customer"] != "ada" || got["beverage"] != "latte" {
		t.Errorf("reply data = %v", got)
	}

	again, err := coffee.NewReply(in, "take-order", coffee.TypeOrderAccepted, "o-1", data)
	if err != nil {
		t.Fatalf("NewReply: %v", err)
	}
	if !equalEvents(t, *out, *again) {
		t.Errorf("replies differ:\n%s\n%s", out, again)
	}
}

func equalEvents(t *testing.T, a, b cloudevents.Event) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ja) == string(jb)
}

func TestNewReplyRejectsUnencodableData(t *testing.T) {
	in := placed(t, "/web", "1", nil)
	if _, err := coffee.NewReply(in, "f", coffee.TypeOrderAccepted, "o", make(chan int)); err == nil {
		t.Fatal("want error for data that cannot be encoded")
	}
}

func TestDecode(t *testing.T) {
	valid := placed(t, "/web", "1", coffee.Order{Customer: "ada", Beverage: "latte"})
	var o coffee.Order
	if err := coffee.Decode(valid, &o); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if o != (coffee.Order{Customer: "ada", Beverage: "latte"}) {
		t.Errorf("decoded %+v", o)
	}

	suffixed := placed(t, "/web", "1", nil)
	if err := suffixed.SetData("application/vnd.koffeeshop+json; charset=utf-8", []byte(`{"customer":"bob","beverage":"tea"}`)); err != nil {
		t.Fatal(err)
	}
	o = coffee.Order{}
	if err := coffee.Decode(suffixed, &o); err != nil || o.Customer != "bob" {
		t.Errorf("Decode +json: %+v, %v", o, err)
	}

	for name, mod := range map[string]func(*cloudevents.Event) error{
		"malformed": func(e *cloudevents.Event) error {
			return e.SetData(cloudevents.ApplicationJSON, []byte(`{"customer":`))
		},
		"empty": func(e *cloudevents.Event) error {
			e.DataEncoded = nil
			return nil
		},
		"not json": func(e *cloudevents.Event) error {
			return e.SetData(cloudevents.TextPlain, []byte(`{"customer":"ada"}`))
		},
		"wrong shape": func(e *cloudevents.Event) error {
			return e.SetData(cloudevents.ApplicationJSON, []byte(`["ada","latte"]`))
		},
	} {
		t.Run(name, func(t *testing.T) {
			e := placed(t, "/web", "1", nil)
			if err := mod(&e); err != nil {
				t.Fatal(err)
			}
			var o coffee.Order
			err := coffee.Decode(e, &o)
			if err == nil {
				t.Fatalf("Decode succeeded with %+v", o)
			}
			if strings.TrimSpace(err.Error()) == "" {
				t.Error("empty error message")
			}
		})
	}
}

// TestFailedPayload pins the field names the board and any client read.
func TestFailedPayload(t *testing.T) {
	b, err := json.Marshal(coffee.Failed{OrderID: "o", Customer: "c", Beverage: "b", Reason: "r", Code: 400, Destination: "http://x/"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"orderId":"o","customer":"c","beverage":"b","reason":"r","code":400,"destination":"http://x/"}`; string(b) != want {
		t.Errorf("order.failed data = %s, want %s", b, want)
	}
}
