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

func main() {
	brewTime, err := serve.DurationEnv(os.Getenv, envBrewTime, defaultBrewTime)
	if err != nil {
		serve.NewLogger(os.Stderr, functionName, serve.InstanceName(os.Getenv)).Error("invalid configuration", "err", err)
		os.Exit(1)
	}
	b := barista{brewTime: brewTime}
	if sink := os.Getenv("K_SINK"); sink != "" {
		s, err := newSink(sink)
		if err != nil {
			serve.NewLogger(os.Stderr, functionName, serve.InstanceName(os.Getenv)).Error("invalid K_SINK", "err", err)
			os.Exit(1)
		}
		b.progress = s
	}
	serve.Main(functionName, b.handle)
}
