// Package httpserver builds the http.Server every koffeeshop process puts
// in front of its handler, with limits a slow or hostile client cannot
// outlast. It depends on net/http alone, so the function binaries use it
// without taking in the broker.
package httpserver

import (
	"net/http"
	"time"
)

// Options are the limits of the server. A zero field takes the default
// beside it.
type Options struct {
	// ReadHeaderTimeout bounds the request line and headers: a client
	// that trickles them (slowloris) is cut off. Default 10 s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request. Default 30 s.
	ReadTimeout time.Duration
	// WriteTimeout bounds handling and answering a request. Default 30 s.
	WriteTimeout time.Duration
	// IdleTimeout closes a kept-alive connection without a request.
	// Default 2 min.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request headers. Default 64 KiB.
	MaxHeaderBytes int
}

// New returns an http.Server for h with the limits of o.
func New(h http.Handler, o Options) *http.Server {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ReadHeaderTimeout, 10*time.Second)
	def(&o.ReadTimeout, 30*time.Second)
	def(&o.WriteTimeout, 30*time.Second)
	def(&o.IdleTimeout, 2*time.Minute)
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
	}
}
