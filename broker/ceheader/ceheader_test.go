package ceheader_test

import (
	"errors"
	"net/http"
	"testing"
	"unicode/utf8"

	"github.com/koffeeshop/koffeeshop/broker/ceheader"
)

func TestEncodeEscapesWhatTheBindingNames(t *testing.T) {
	for in, want := range map[string]string{
		"plain/ascii-value": "plain/ascii-value",
		"a b":               "a%20b",
		`say "hi"`:          "say%20%22hi%22",
		"100%":              "100%25",
		"€":                 "%E2%82%AC",
		"tab\there":         "tab%09here",
		"line\r\nbreak":     "line%0D%0Abreak",
		"\x7f":              "%7F",
		"":                  "",
	} {
		if got := ceheader.Encode(in); got != want {
			t.Errorf("Encode(%q) = %q, want %q", in, got, want)
		}
		if back, err := ceheader.Decode(want); err != nil || back != in {
			t.Errorf("Decode(%q) = %q, %v; want %q", want, back, err, in)
		}
	}
}

func TestDecodeRefusesMalformedValues(t *testing.T) {
	for _, v := range []string{"%", "%2", "%zz", "a%g0", "%FF", "%C3%28", "\xff"} {
		if _, err := ceheader.Decode(v); !errors.Is(err, ceheader.ErrMalformed) {
			t.Errorf("Decode(%q): err %v, want ErrMalformed", v, err)
		}
	}
	// Raw UTF-8 from a lenient sender is kept.
	if v, err := ceheader.Decode("café"); err != nil || v != "café" {
		t.Errorf("Decode(café) = %q, %v", v, err)
	}
}

func TestHTTPHeadersOnlyCeValues(t *testing.T) {
	h := http.Header{"Ce-Source": {"/a%20b"}, "Content-Type": {"text/plain; charset=%"}, "Ce-Myext": {"x%22y"}}
	if err := ceheader.DecodeHTTP(h); err != nil {
		t.Fatal(err)
	}
	if h.Get("Ce-Source") != "/a b" || h.Get("Ce-Myext") != `x"y` || h.Get("Content-Type") != "text/plain; charset=%" {
		t.Fatalf("decoded %v", h)
	}
	ceheader.EncodeHTTP(h)
	if h.Get("Ce-Source") != "/a%20b" || h.Get("Ce-Myext") != "x%22y" || h.Get("Content-Type") != "text/plain; charset=%" {
		t.Fatalf("encoded %v", h)
	}
	if err := ceheader.DecodeHTTP(http.Header{"Ce-Id": {"%zz"}}); err == nil {
		t.Fatal("a malformed Ce- header decoded")
	}
}

// FuzzRoundTrip: every UTF-8 string survives Encode then Decode, and the
// encoded form is printable ASCII without space, '"' or line breaks.
func FuzzRoundTrip(f *testing.F) {
	for _, s := range []string{"", "a b", "%", "€", "\x00\n", `"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		enc := ceheader.Encode(s)
		for i := 0; i < len(enc); i++ {
			if c := enc[i]; c <= ' ' || c >= 0x7f || c == '"' {
				t.Fatalf("Encode(%q) = %q has byte %#x", s, enc, c)
			}
		}
		dec, err := ceheader.Decode(enc)
		if err != nil || dec != s {
			t.Fatalf("Decode(Encode(%q)) = %q, %v", s, dec, err)
		}
	})
}
