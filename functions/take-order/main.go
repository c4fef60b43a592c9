// Command take-order turns order.placed events into order.accepted or
// order.rejected replies.
package main

import "github.com/koffeeshop/koffeeshop/functions/serve"

func main() {
	serve.Main(functionName, handle)
}
