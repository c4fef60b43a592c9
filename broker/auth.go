package broker

import (
	"crypto/subtle"
	"net/http"
	"strings"
)

// RequireBearer lets through only requests that carry
// "Authorization: Bearer <token>"; others get 401 with a
// WWW-Authenticate challenge. OPTIONS passes, so senders can discover the
// endpoint as Knative's ingress allows.
func RequireBearer(token string, next http.Handler) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodOptions {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), want) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="koffeeshop broker"`)
				httpError(w, http.StatusUnauthorized, "missing or wrong bearer token")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
