package broker

import (
	"net/http"

	"github.com/koffeeshop/koffeeshop/broker/httpserver"
)

// ServerOptions are the limits of the HTTP server in front of the
// ingress; see httpserver.Options for each and its default.
type ServerOptions = httpserver.Options

// NewServer returns an http.Server for h with the limits of o.
func NewServer(h http.Handler, o ServerOptions) *http.Server { return httpserver.New(h, o) }
