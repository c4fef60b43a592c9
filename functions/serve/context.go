package serve

import (
	"context"
	"log/slog"
)

type instanceKey struct{}

type loggerKey struct{}

// WithInstance returns a context carrying the instance name.
func WithInstance(ctx context.Context, instance string) context.Context {
	return context.WithValue(ctx, instanceKey{}, instance)
}

// Instance returns the name of the function instance handling the event, or
// "" when ctx carries none.
func Instance(ctx context.Context) string {
	s, _ := ctx.Value(instanceKey{}).(string)
	return s
}

// WithLogger returns a context carrying logger.
func WithLogger(ctx context.Context, logger *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, logger)
}

// Logger returns the logger carried by ctx, or a logger discarding
// everything when ctx carries none.
func Logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok && l != nil {
		return l
	}
	return slog.New(slog.DiscardHandler)
}
