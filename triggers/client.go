package triggers

import (
	"net"
	"net/http"
	"time"
)

// NewHTTPClient is the client of a dispatcher's deliveries: keep-alive
// connections to many subscribers at once, and no proxy (subscribers are
// on the same machine or in the cluster). The delivery policy bounds each
// attempt, so the client sets no timeout of its own.
func NewHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}}
}
