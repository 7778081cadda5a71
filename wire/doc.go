// Package wire holds what the Ward server and the Ward device agent must
// agree on: identifier syntax, MQTT topic names, EST paths, and (later)
// envelopes, twin documents and OTA job messages.
//
// It performs no I/O and imports nothing from the rest of this module, so
// the agent can depend on it without pulling in server code.
package wire
