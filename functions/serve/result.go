package serve

import (
	"errors"
	"fmt"
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

// Message returns the text of a handler error without the status code that
// a *cehttp.Result puts in front of it ("400: ..."), for a response body
// whose status line already carries the code.
func Message(err error) string {
	if err == nil {
		return ""
	}
	if res, ok := err.(*cehttp.Result); ok {
		return fmt.Errorf(res.Format, res.Args...).Error()
	}
	return err.Error()
}
