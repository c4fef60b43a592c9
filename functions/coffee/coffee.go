// Package coffee holds the domain shared by the koffeeshop functions: event
// types, payloads, the menu and the construction of reply events.
package coffee

import (
	"slices"
	"strings"
)

// CloudEvent types flowing through the shop.
const (
	TypeOrderPlaced   = "com.koffeeshop.order.placed"
	TypeOrderAccepted = "com.koffeeshop.order.accepted"
	TypeOrderRejected = "com.koffeeshop.order.rejected"
	TypeBeverageReady = "com.koffeeshop.beverage.ready"
	// TypeBeveragePreparing is a progress event prepare-beverage sends to
	// its sink (K_SINK) when it starts brewing; it carries a Ready payload.
	TypeBeveragePreparing = "com.koffeeshop.beverage.preparing"
	TypeCustomerNotified  = "com.koffeeshop.customer.notified"
	// TypeOrderFailed tells that an event of an order could not be handled
	// for good: its delivery was dead-lettered. It carries a Failed payload.
	TypeOrderFailed = "com.koffeeshop.order.failed"
)

// Order is the payload of an order.placed event.
type Order struct {
	Customer string `json:"customer"`
	Beverage string `json:"beverage"`
}

// Accepted is the payload of an order.accepted event.
type Accepted struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Beverage string `json:"beverage"`
}

// Rejected is the payload of an order.rejected event.
type Rejected struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Beverage string `json:"beverage"`
	Reason   string `json:"reason"`
}

// Ready is the payload of a beverage.ready event.
type Ready struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Beverage string `json:"beverage"`
	Barista  string `json:"barista"`
}

// Notified is the payload of a customer.notified event.
type Notified struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Beverage string `json:"beverage"`
	Barista  string `json:"barista"`
	Message  string `json:"message"`
}

// Failed is the payload of an order.failed event.
type Failed struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Beverage string `json:"beverage"`
	// Reason is what the subscriber answered, or what went wrong.
	Reason string `json:"reason"`
	// Code is the HTTP status of the last failed delivery (500 for a
	// transport error), as Knative's knativeerrorcode reports it.
	Code int `json:"code"`
	// Destination is the subscriber that failed (knativeerrordest).
	Destination string `json:"destination"`
}

// Menu returns the beverages the shop serves, in menu order.
func Menu() []string {
	return []string{"espresso", "americano", "latte", "cappuccino", "flat-white", "mocha", "tea"}
}

// MaxCustomerLen is the longest customer name an order may carry, in
// characters.
const MaxCustomerLen = 64

// LookupBeverage finds a beverage on the menu, ignoring case and surrounding
// whitespace, with a space or an underscore for a hyphen ("Flat White"), and
// returns its canonical name.
func LookupBeverage(name string) (string, bool) {
	name = strings.NewReplacer(" ", "-", "_", "-").Replace(strings.ToLower(strings.TrimSpace(name)))
	if name == "" || !slices.Contains(Menu(), name) {
		return "", false
	}
	return name, true
}
