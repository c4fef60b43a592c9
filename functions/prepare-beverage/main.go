// Command prepare-beverage brews accepted orders and replies beverage.ready.
package main

import (
	"os"
	"time"

	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// envBrewTime is the time taken to brew one beverage (Go duration, "0" for none).
const envBrewTime = "BREW_TIME"

const defaultBrewTime = time.Second

// progressTimeout bounds sending the progress event: it is best effort, and
// a slow sink must not hold up the brew.
const progressTimeout = 2 * time.Second

func main() {
	log := serve.NewLogger(os.Stderr, functionName, serve.InstanceName(os.Getenv))
	brewTime, err := serve.DurationEnv(os.Getenv, envBrewTime, defaultBrewTime)
	if err != nil {
		log.Error("invalid configuration", "err", err)
		os.Exit(1)
	}
	b := barista{brewTime: brewTime}
	sink, err := serve.SinkFromEnv(os.Getenv, progressTimeout)
	if err != nil {
		log.Error("invalid configuration", "err", err)
		os.Exit(1)
	}
	if sink != nil {
		b.progress = sink.Send
	}
	serve.Main(functionName, b.handle)
}
