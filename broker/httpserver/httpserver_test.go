package httpserver_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/broker/httpserver"
)

// TestZeroLimitsTakeTheDefaults: no limit is ever left off, and a limit
// given is kept.
func TestZeroLimitsTakeTheDefaults(t *testing.T) {
	srv := httpserver.New(http.NotFoundHandler(), httpserver.Options{ReadTimeout: time.Minute})
	if srv.ReadHeaderTimeout != 10*time.Second || srv.ReadTimeout != time.Minute || srv.WriteTimeout != 30*time.Second ||
		srv.IdleTimeout != 2*time.Minute || srv.MaxHeaderBytes != 64<<10 {
		t.Errorf("limits %v %v %v %v %d", srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes)
	}
	if srv.Handler == nil {
		t.Error("no handler")
	}
}
