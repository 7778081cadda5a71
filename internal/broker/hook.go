package broker

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/wardiot/ward/internal/policy"
)

// hook binds mochi's session layer to Ward's identity, policy and limits.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "ward" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnSessionEstablished,
		mqtt.OnACLCheck,
		mqtt.OnSubscribe,
		mqtt.OnUnsubscribe,
		mqtt.OnPublish,
		mqtt.OnPacketRead,
		mqtt.OnPacketEncode,
		mqtt.OnDisconnect,
		mqtt.OnWill,
	}, []byte{b})
}

// refuse answers CONNECT with a reason code (mapped for MQTT 3.1.1) and
// returns the error that makes mochi drop the connection.
func (h *hook) refuse(cl *mqtt.Client, v5, v3 packets.Code) error {
	code := v5
	if cl.Properties.ProtocolVersion < 5 {
		code = v3
	}
	_ = h.b.srv.SendConnack(cl, code, false, nil)
	return v5
}

// OnConnect binds the MQTT session to the certificate: the client ID must be
// the certificate's device ID, the session key becomes tenant-qualified, and
// the policy is bound. It runs before mochi looks for a session to take over.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	s := sessionOf(cl)
	if s == nil {
		return packets.ErrNotAuthorized // not from our listener: never happens
	}
	if pk.Connect.ClientIdentifier != s.id.Device {
		b.emit(EventClientIDMismatch, s, "client ID does not match the certificate")
		return h.refuse(cl, packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid)
	}
	if ok, scope := b.lim.allowConnect(s.id); !ok {
		b.emit(EventRateLimited, s, scope)
		return h.refuse(cl, packets.ErrQuotaExceeded, packets.Err3ServerUnavailable)
	}
	pol := b.policyFor(s.id)
	rules, err := pol.Bind(policy.Vars{Tenant: s.id.Tenant, Device: deviceVar(s.id), Service: serviceVar(s.id)})
	if err != nil {
		b.emit(EventConnectRefused, s, "policy cannot be bound: "+err.Error())
		return h.refuse(cl, packets.ErrNotAuthorized, packets.Err3NotAuthorized)
	}
	s.rules = rules
	if clones := b.reg.admit(s); len(clones) > 0 {
		b.emit(EventCertShared, s, "certificate already in use from "+clones[0].remote)
		if b.cfg.SharedCert != nil && b.cfg.SharedCert(s.id.Tenant) == CutBoth {
			for _, o := range clones {
				if ocl := o.client(); ocl != nil {
					b.cut(ocl, "certificate shared")
				}
			}
		}
		return h.refuse(cl, packets.ErrNotAuthorized, packets.Err3NotAuthorized)
	}
	cl.ID = clientKey(s.id.Kind, s.id.Tenant, s.id.Device)
	// Wills would publish on the device's behalf after it is gone, outside
	// ingest; Ward tracks presence itself.
	cl.Properties.Will = mqtt.Will{}
	if max := uint16(b.cfg.MaxKeepalive / time.Second); cl.State.Keepalive == 0 || cl.State.Keepalive > max {
		cl.State.Keepalive = max
		cl.State.ServerKeepalive = true
	}
	return nil
}

// OnConnectAuthenticate accepts: authentication happened in the TLS
// handshake and in OnConnect. Username and password are ignored.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return sessionOf(cl) != nil
}

func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if s := sessionOf(cl); s != nil {
		s.cl.Store(cl)
		if s.cut.Load() {
			h.b.cut(cl, "cut while connecting")
		}
	}
}

func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	return mqtt.Will{}, errors.New("wills are not supported")
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	s := sessionOf(cl)
	if s == nil {
		return
	}
	if errors.Is(err, packets.ErrPacketTooLarge) {
		h.b.emit(EventPacketTooLarge, s, "packet larger than the maximum packet size")
	}
}

func (b *Broker) policyFor(id Identity) *policy.Policy {
	if id.Quarantined {
		return policy.Quarantine()
	}
	if b.deps.Policies != nil {
		if p := b.deps.Policies.For(id); p != nil {
			return p
		}
	}
	if id.Kind == KindService {
		return policy.ServiceReadOnly()
	}
	return policy.Default()
}

func deviceVar(id Identity) string {
	if id.Kind == KindDevice {
		return id.Device
	}
	return ""
}

func serviceVar(id Identity) string {
	if id.Kind == KindService {
		return id.Device
	}
	return ""
}

// OnPacketRead charges every PUBLISH to the rate limits before anything
// else looks at it, so refused publishes cost the sender too.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	s := sessionOf(cl)
	if s == nil {
		return pk, nil
	}
	ok, scope := h.b.lim.allowMessage(s, len(pk.TopicName)+len(pk.Payload))
	s.limited = !ok
	if !ok {
		h.b.emitLimited(EventRateLimited, s, scope)
	}
	// mochi silently drops publishes to $-topics and topics with wildcards,
	// leaving a QoS 1 sender waiting forever. Route them into the normal
	// refusal (PUBACK 0x87, or a disconnect for MQTT 3.1.1) instead.
	s.refused = policy.ValidateTopic(pk.TopicName) != nil || strings.HasPrefix(pk.TopicName, "$")
	if s.refused {
		h.b.emitLimited(EventPolicyDenied, s, "publish to "+truncate(pk.TopicName))
		pk.TopicName = refusedTopic
	}
	return pk, nil
}

func (b *Broker) emitLimited(typ string, s *session, reason string) {
	if s.events.take(1, b.cfg.Clock()) {
		b.emit(typ, s, reason)
	}
}

// OnACLCheck is mochi's policy question. For a publish it gets the topic as
// the client wrote it. For a subscribe, and on delivery, it gets the
// namespaced filter or topic written by OnSubscribe or Publish.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	s := sessionOf(cl)
	if s == nil || s.rules == nil {
		return false
	}
	if write {
		if s.refused {
			return false
		}
		if s.rules.CanPublish(topic) {
			return true
		}
		h.b.emitLimited(EventPolicyDenied, s, "publish to "+truncate(topic))
		return false
	}
	raw, ok := s.strip(topic)
	return ok && s.rules.CanSubscribe(raw)
}

// OnSubscribe moves allowed filters into the client's namespace and marks
// refused ones so OnACLCheck refuses them.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := sessionOf(cl)
	if s == nil {
		return pk
	}
	filters := make(packets.Subscriptions, len(pk.Filters))
	for i, f := range pk.Filters {
		allowed := s.rules != nil && s.rules.CanSubscribe(f.Filter)
		switch {
		case !allowed:
			h.b.emitLimited(EventPolicyDenied, s, "subscribe to "+truncate(f.Filter))
		case s.subs >= MaxSubscriptionsPerSession:
			allowed = false
			h.b.emitLimited(EventRateLimited, s, "subscriptions per session")
		default:
			s.subs++
		}
		if allowed {
			f.Filter = s.ns + f.Filter
		} else {
			f.Filter = nsDenied + f.Filter
		}
		filters[i] = f
	}
	pk.Filters = filters
	return pk
}

func (h *hook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := sessionOf(cl)
	if s == nil {
		return pk
	}
	filters := make(packets.Subscriptions, len(pk.Filters))
	for i, f := range pk.Filters {
		f.Filter = s.ns + f.Filter
		filters[i] = f
	}
	pk.Filters = filters
	return pk
}

// OnPublish hands an allowed device publish to ingest and keeps it away from
// every other client. Publishes from Ward itself (the inline client) are
// already namespaced and go to subscribers.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	s := sessionOf(cl)
	if s == nil {
		return pk, packets.ErrRejectPacket
	}
	v5 := cl.Properties.ProtocolVersion == 5
	if s.limited {
		return pk, h.refusePublish(cl, pk, v5, packets.ErrQuotaExceeded)
	}
	err := h.b.deps.Ingest.Deliver(context.Background(), s.id, pk.TopicName, pk.Payload, pk.FixedHeader.Qos)
	if err != nil {
		code := packets.ErrUnspecifiedError
		if errors.Is(err, ErrOverloaded) {
			code = packets.ErrQuotaExceeded
		}
		return pk, h.refusePublish(cl, pk, v5, code)
	}
	return pk, packets.CodeSuccessIgnore // acknowledged, never routed
}

// refusePublish: MQTT 5 QoS>=1 gets a PUBACK with the reason code; QoS 0 is
// dropped; MQTT 3.1.1 QoS>=1 has no way to say no, so the session is cut
// before the message could be acknowledged.
func (h *hook) refusePublish(cl *mqtt.Client, pk packets.Packet, v5 bool, code packets.Code) error {
	switch {
	case pk.FixedHeader.Qos == 0:
		return packets.ErrRejectPacket
	case v5:
		return code
	default:
		cl.Stop(code)
		return packets.ErrRejectPacket
	}
}

// OnPacketEncode strips the namespace from topics on their way out and
// advertises the maximum packet size.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if s := sessionOf(cl); s != nil {
			if raw, ok := s.strip(pk.TopicName); ok {
				pk.TopicName = raw
			}
		}
	case packets.Connack:
		pk.Properties.MaximumPacketSize = h.b.cfg.MaxPacketSize
	}
	return pk
}

func truncate(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
