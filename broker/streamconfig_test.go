package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
)

func TestParseStreamOptions(t *testing.T) {
	defaults := broker.StreamOptions{Replicas: 1, Storage: jetstream.FileStorage, MaxAge: 24 * time.Hour, DuplicateWindow: 2 * time.Minute}
	if got := broker.DefaultStreamOptions(); got != defaults {
		t.Fatalf("broker.DefaultStreamOptions() = %+v, want the documented %+v", got, defaults)
	}
	for _, tc := range []struct {
		name    string
		data    map[string]string
		want    broker.StreamOptions
		wantErr string
	}{
		{name: "no data", data: nil, want: defaults},
		{name: "every key", data: map[string]string{"replicas": "3", "storage": "memory", "maxAge": "168h", "duplicateWindow": "10m"},
			want: broker.StreamOptions{Replicas: 3, Storage: jetstream.MemoryStorage, MaxAge: 168 * time.Hour, DuplicateWindow: 10 * time.Minute}},
		{name: "surrounding space", data: map[string]string{"replicas": " 3\n", "storage": "file "},
			want: broker.StreamOptions{Replicas: 3, Storage: jetstream.FileStorage, MaxAge: 24 * time.Hour, DuplicateWindow: 2 * time.Minute}},
		{name: "maxAge 0 keeps events without an age limit", data: map[string]string{"maxAge": "0", "duplicateWindow": "1h"},
			want: broker.StreamOptions{Replicas: 1, Storage: jetstream.FileStorage, MaxAge: 0, DuplicateWindow: time.Hour}},
		{name: "JetStream's replica limit", data: map[string]string{"replicas": "6"}, wantErr: `replicas: "6" is not a whole number from 1 to 5`},
		{name: "zero replicas", data: map[string]string{"replicas": "0"}, wantErr: `replicas: "0"`},
		{name: "storage is case-sensitive", data: map[string]string{"storage": "File"}, wantErr: `storage: "File" is neither file nor memory`},
		{name: "a duration without unit", data: map[string]string{"maxAge": "24"}, wantErr: `maxAge: "24" is not a duration`},
		{name: "a zero duplicate window", data: map[string]string{"duplicateWindow": "0s"}, wantErr: `duplicateWindow: "0s" is not a positive duration`},
		{name: "window longer than max age", data: map[string]string{"maxAge": "1m", "duplicateWindow": "2m"},
			wantErr: "duplicateWindow (2m0s) is longer than maxAge (1m0s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := broker.ParseStreamOptions(tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
