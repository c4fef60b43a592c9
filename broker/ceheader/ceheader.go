// Package ceheader percent-encodes and percent-decodes the CloudEvents
// attribute values that travel as protocol headers, by the rules of the
// HTTP protocol binding (§3.1.3.2): space, '"', '%' and every byte outside
// printable ASCII are written as %XX of their UTF-8 encoding, and a
// receiver decodes them before it reads the value.
//
// The NATS stored form uses the same rules, so any string survives a NATS
// header, which may carry neither CR nor LF.
package ceheader

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Prefix starts the canonical name of every attribute header but
// Content-Type.
const Prefix = "Ce-"

const hex = "0123456789ABCDEF"

// needsEscape reports whether b is written as %XX.
func needsEscape(b byte) bool {
	return b <= ' ' || b >= 0x7f || b == '"' || b == '%'
}

// Encode percent-encodes v.
func Encode(v string) string {
	n := 0
	for i := 0; i < len(v); i++ {
		if needsEscape(v[i]) {
			n++
		}
	}
	if n == 0 {
		return v
	}
	var b strings.Builder
	b.Grow(len(v) + 2*n)
	for i := 0; i < len(v); i++ {
		c := v[i]
		if needsEscape(c) {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// ErrMalformed is wrapped by Decode's errors.
var ErrMalformed = errors.New("malformed percent-encoding")

// Decode percent-decodes v. A '%' not followed by two hex digits, or a
// result that is not UTF-8, is an error.
func Decode(v string) (string, error) {
	i := strings.IndexByte(v, '%')
	if i < 0 {
		if !utf8.ValidString(v) {
			return "", fmt.Errorf("%w: not UTF-8", ErrMalformed)
		}
		return v, nil
	}
	b := make([]byte, 0, len(v))
	b = append(b, v[:i]...)
	for ; i < len(v); i++ {
		c := v[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(v) {
			return "", fmt.Errorf("%w: %q ends inside an escape", ErrMalformed, v)
		}
		hi, ok1 := unhex(v[i+1])
		lo, ok2 := unhex(v[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("%w: %q at offset %d", ErrMalformed, v[i:i+3], i)
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	if !utf8.Valid(b) {
		return "", fmt.Errorf("%w: the decoded value is not UTF-8", ErrMalformed)
	}
	return string(b), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// DecodeHTTP percent-decodes, in place, the values of h's Ce- headers.
func DecodeHTTP(h http.Header) error {
	for k, vs := range h {
		if !strings.HasPrefix(k, Prefix) {
			continue
		}
		for i, v := range vs {
			d, err := Decode(v)
			if err != nil {
				return fmt.Errorf("header %s: %w", k, err)
			}
			vs[i] = d
		}
	}
	return nil
}

// EncodeHTTP percent-encodes, in place, the values of h's Ce- headers.
func EncodeHTTP(h http.Header) {
	for k, vs := range h {
		if !strings.HasPrefix(k, Prefix) {
			continue
		}
		for i, v := range vs {
			vs[i] = Encode(v)
		}
	}
}
