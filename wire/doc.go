// Package wire holds what the Ward server and the Ward device agent must
// agree on: identifier syntax, MQTT topic names, EST paths, signed
// telemetry envelopes (COSE_Sign1 / COSE_Mac0, see envelope.go for the
// header label table), twin messages and (later) OTA job messages.
//
// It performs no I/O and imports nothing from the rest of this module, so
// the agent can depend on it without pulling in server code.
package wire
