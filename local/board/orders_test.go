package board_test

import (
	"fmt"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/board"
)

// TestOrdersKeepTheirBound: the projection keeps its bound, evicting the
// least recently updated order, tells each change as it happens, and a
// View sees the orders kept, oldest first.
func TestOrdersKeepTheirBound(t *testing.T) {
	var changes []string
	orders := board.NewOrders(3, func(o board.Order) { changes = append(changes, o.OrderID+" "+o.Stage) })
	at := time.Unix(0, 0)
	apply := func(typ, id string) {
		at = at.Add(time.Second)
		orders.Apply(event(t, typ+id, typ, cloudevents.ApplicationJSON, coffee.Ready{OrderID: id, Customer: "c", Beverage: "tea"}), at)
	}
	for i := range 3 {
		apply(coffee.TypeOrderAccepted, fmt.Sprint("o-", i))
	}
	apply(coffee.TypeBeverageReady, "o-0")     // o-0 is now the most recent
	apply(coffee.TypeOrderAccepted, "o-3")     // evicts o-1
	apply(coffee.TypeBeveragePreparing, "o-2") // moves o-2 on
	apply(coffee.TypeOrderAccepted, "o-2")     // would move o-2 back: no change

	var kept []string
	orders.View(func(all []board.Order) {
		for _, o := range all {
			kept = append(kept, o.OrderID+" "+o.Stage)
		}
	})
	if got, want := fmt.Sprint(kept), "[o-0 ready o-3 accepted o-2 preparing]"; got != want {
		t.Errorf("kept %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(changes), "[o-0 accepted o-1 accepted o-2 accepted o-0 ready o-3 accepted o-2 preparing]"; got != want {
		t.Errorf("changes %s, want %s", got, want)
	}
	if c := orders.Counts(); c["accepted"] != 1 || c["ready"] != 1 || c["preparing"] != 1 {
		t.Errorf("counts %v", c)
	}
}
