package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Sink receives verified messages. Write must be safe for concurrent use
// and must not keep m after returning.
type Sink interface {
	Write(ctx context.Context, m *Message) error
}

// FanOut writes each message to every sink concurrently. A failing sink
// does not stop the others; Write returns all failures joined.
type FanOut []Sink

// Write implements [Sink].
func (f FanOut) Write(ctx context.Context, m *Message) error {
	if len(f) == 1 {
		return f[0].Write(ctx, m)
	}
	errs := make([]error, len(f))
	var wg sync.WaitGroup
	for i, s := range f {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Write(ctx, m); err != nil {
				errs[i] = fmt.Errorf("sink %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Record is the JSON form of a verified message that sinks deliver
// downstream. Payload is redacted unless the sink was configured to include
// confidential fields.
type Record struct {
	Tenant        string          `json:"tenant"`
	Device        string          `json:"device"`
	Stream        string          `json:"stream"`
	Seq           uint64          `json:"seq"`
	Time          time.Time       `json:"time"`
	Received      time.Time       `json:"received"`
	Schema        string          `json:"schema"`
	SchemaVersion uint32          `json:"schema_version"`
	Payload       json.RawMessage `json:"payload"`
}

func recordOf(m *Message, includeConfidential bool) ([]byte, error) {
	p := m.Payload
	if !includeConfidential {
		p = m.Redacted()
	}
	return json.Marshal(Record{
		Tenant: m.Tenant, Device: m.Device, Stream: m.Stream, Seq: m.Seq,
		Time: m.Time.UTC(), Received: m.Received.UTC(),
		Schema: m.SchemaID, SchemaVersion: m.SchemaVersion, Payload: p,
	})
}
