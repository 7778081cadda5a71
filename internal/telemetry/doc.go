// Package telemetry verifies device telemetry envelopes at ingest and
// forwards verified messages to sinks.
//
// [Verifier.Verify] runs, in order: size limit, parse, device binding to the
// mTLS identity, key lookup, signature or MAC, timestamp window, replay
// window, schema validation. Every rejection is an [*Error] carrying a
// [Reason] that the caller counts as a security event.
//
// Lock order: a replay shard lock is never held while any other lock is
// taken; the schema registry lock is independent of replay shards.
package telemetry
