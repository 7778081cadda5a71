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

type issueKey struct{}

type issueNote struct{ action, detail string }

// WithIssue names the action and adds a note for the audit entry of a
// certificate issued deeper in the call (for example "est.enroll" and the
// token used), so that one entry records both why and what.
func WithIssue(ctx context.Context, action, detail string) context.Context {
	return context.WithValue(ctx, issueKey{}, issueNote{action, detail})
}

// IssueFrom returns what WithIssue recorded, if anything.
func IssueFrom(ctx context.Context) (action, detail string, ok bool) {
	n, ok := ctx.Value(issueKey{}).(issueNote)
	return n.action, n.detail, ok
}
