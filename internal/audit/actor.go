package audit

import "context"

type actorKey struct{}

// WithActor records who is acting (for example "token:<id>" or
// "device:<tenant>/<id>") in ctx, so that parts that audit deep inside a
// call can name the actor without threading it through every signature.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorFrom returns the actor recorded by WithActor, or "system".
func ActorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "system"
}
