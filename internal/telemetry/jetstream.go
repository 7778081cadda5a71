package telemetry

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultSubjectPrefix is where verified telemetry is published:
// <prefix>.<tenant>.<device>.<stream>.
const DefaultSubjectPrefix = "ward.telemetry"

// JetStreamPublisher is the part of jetstream.JetStream the sink uses.
type JetStreamPublisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// JetStreamSink publishes verified messages to NATS JetStream. Each message
// carries Nats-Msg-Id = tenant/device/seq, so a publish retried after a
// lost acknowledgement is stored once (within the stream's duplicate
// window).
type JetStreamSink struct {
	js                  JetStreamPublisher
	prefix              string
	includeConfidential bool
}

// JetStreamOption configures a [JetStreamSink].
type JetStreamOption func(*JetStreamSink)

// WithSubjectPrefix replaces [DefaultSubjectPrefix].
func WithSubjectPrefix(p string) JetStreamOption {
	return func(s *JetStreamSink) { s.prefix = p }
}

// WithConfidential makes the sink publish confidential fields. Only for
// streams whose storage is itself protected accordingly.
func WithConfidential() JetStreamOption {
	return func(s *JetStreamSink) { s.includeConfidential = true }
}

// NewJetStreamSink returns a sink publishing with js.
func NewJetStreamSink(js JetStreamPublisher, opts ...JetStreamOption) *JetStreamSink {
	s := &JetStreamSink{js: js, prefix: DefaultSubjectPrefix}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Subject returns the subject a message is published to. Device IDs may
// contain '.', the NATS token separator, so it is written as "%2E"; '%'
// never occurs in device IDs, so the mapping is one-to-one.
func (s *JetStreamSink) Subject(m *Message) string {
	return s.prefix + "." + m.Tenant + "." + strings.ReplaceAll(m.Device, ".", "%2E") + "." + m.Stream
}

// MsgID returns the JetStream de-duplication ID of a message.
func MsgID(m *Message) string {
	return m.Tenant + "/" + m.Device + "/" + strconv.FormatUint(m.Seq, 10)
}

// Write implements [Sink].
func (s *JetStreamSink) Write(ctx context.Context, m *Message) error {
	body, err := recordOf(m, s.includeConfidential)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(s.Subject(m))
	msg.Data = body
	msg.Header.Set("Ward-Schema", m.SchemaID+"/"+strconv.FormatUint(uint64(m.SchemaVersion), 10))
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(MsgID(m))); err != nil {
		return fmt.Errorf("publishing telemetry to JetStream: %w", err)
	}
	return nil
}

var _ Sink = (*JetStreamSink)(nil)
