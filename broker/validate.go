package broker

import (
	"fmt"
	"mime"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// Validate checks what the broker stores: a valid CloudEvent (sdk-go's
// rules) whose datacontenttype, when set, is an RFC 2046 media type that
// fits an HTTP header, so every subscriber can be sent the event in binary
// mode as well as structured.
func Validate(e *cloudevents.Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	dct := e.DataContentType()
	if dct == "" {
		return nil
	}
	for i := 0; i < len(dct); i++ {
		if c := dct[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return fmt.Errorf("datacontenttype %q has a control character", dct)
		}
	}
	if _, _, err := mime.ParseMediaType(dct); err != nil {
		return fmt.Errorf("datacontenttype %q is not a media type: %w", dct, err)
	}
	return nil
}
