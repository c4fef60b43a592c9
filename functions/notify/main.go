// Command notify tells customers their beverage is ready.
package main

import "github.com/koffeeshop/koffeeshop/functions/serve"

func main() {
	serve.Main(functionName, handle)
}
