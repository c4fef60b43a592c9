package board

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// hub pushes the board's messages to every browser's Server-Sent Events
// stream.
type hub struct {
	mu   sync.Mutex
	subs map[chan []byte]struct{}
}

func newHub() *hub { return &hub{subs: map[chan []byte]struct{}{}} }

// subscribe adds a browser: it gets every message broadcast from now on,
// until it calls unsubscribe.
func (h *hub) subscribe() (msgs <-chan []byte, unsubscribe func()) {
	ch := make(chan []byte, 256)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

// broadcast sends to every browser; a browser too slow to keep up misses
// the message rather than holding the others back.
func (h *hub) broadcast(event string, v any) {
	msg := sse(event, v)
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- msg:
		default:
		}
	}
}

// stream writes the messages first, then those of msgs, to a browser's
// event stream until the browser goes away. w must be an http.Flusher.
func stream(w http.ResponseWriter, r *http.Request, first [][]byte, msgs <-chan []byte) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	for _, msg := range first {
		_, _ = w.Write(msg)
	}
	_ = rc.Flush()
	// The write deadline of the server does not apply to this stream.
	_ = rc.SetWriteDeadline(time.Time{})
	for {
		select {
		case <-r.Context().Done():
			return
		case msg := <-msgs:
			if _, err := w.Write(msg); err != nil {
				return
			}
			_ = rc.Flush()
		}
	}
}

// sse is one Server-Sent Events message: event, with v as JSON.
func sse(event string, v any) []byte {
	data, _ := json.Marshal(v)
	return []byte("event: " + event + "\ndata: " + string(data) + "\n\n")
}
