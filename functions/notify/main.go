// Command notify tells customers their beverage is ready, and whoever
// placed an order that it failed when one of its events was dead-lettered.
package main

import (
	"os"

	"github.com/koffeeshop/koffeeshop/functions/serve"
)

func main() {
	sink, err := serve.SinkFromEnv(os.Getenv, 0)
	if err != nil {
		serve.NewLogger(os.Stderr, functionName, serve.InstanceName(os.Getenv)).Error("invalid configuration", "err", err)
		os.Exit(1)
	}
	var dl deadLetters
	if sink != nil {
		dl.send = sink.Send
	}
	serve.Main(functionName, handle, serve.Route{Path: deadLetterPath, Handler: dl.handle})
}
