// Package testkit is what the tests of every layer share: a real JetStream
// inside the test process, CloudEvents posted over real HTTP, a sink that
// records what it is sent, and a wait on a condition.
//
// It imports no koffeeshop package, so that the tests of any package,
// broker's own included, can use it.
package testkit
