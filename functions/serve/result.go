package serve

import (
	"errors"
	"net/http"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// BadRequest returns a permanent error: the event is answered with 400 and
// must not be redelivered. format may use %w to wrap an error.
func BadRequest(format string, args ...any) error {
	return cehttp.NewResult(http.StatusBadRequest, format, args...)
}

// StatusCode returns the HTTP status a handler error is answered with: 200
// for nil, the code of an (optionally wrapped) *cehttp.Result, 500 otherwise.
func StatusCode(err error) int {
	if err == nil {
		return http.StatusOK
	}
	var res *cehttp.Result
	if errors.As(err, &res) && res.StatusCode > 100 && res.StatusCode < 600 {
		return res.StatusCode
	}
	return http.StatusInternalServerError
}
