// Command take-order turns order.placed events into order.accepted or
// order.rejected replies.
package main

import (
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// menu is what take-order answers on GET /.
type menu struct {
	Menu           []string `json:"menu"`
	Order          string   `json:"order"`
	Type           string   `json:"type"`
	MaxCustomerLen int      `json:"maxCustomerLength"`
}

func main() {
	// GET / tells a person what the shop serves and what an order is.
	serve.Main(functionName, handle, serve.Describe(menu{
		Menu:           coffee.Menu(),
		Order:          orderShape,
		Type:           coffee.TypeOrderPlaced,
		MaxCustomerLen: coffee.MaxCustomerLen,
	}))
}
