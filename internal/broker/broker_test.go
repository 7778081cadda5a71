package broker

import (
	"bytes"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	v311 = 4
	v5   = 5
)

func TestOwnTopicsGoClient(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	d1 := pki.device(t, "acme", "d1")
	for _, version := range []byte{v311, v5} {
		m, err := h.dial(t, d1)
		if err != nil {
			t.Fatal(err)
		}
		m.mustConnect("d1", version)
		code, err := m.publish("ward/v1/d1/telemetry/temp", []byte("21.5"), 1)
		if err != nil || code != 0 {
			t.Fatalf("v%d publish: code 0x%02x err %v", version, code, err)
		}
		waitFor(t, "ingest", 2*time.Second, func() bool {
			for _, d := range h.ingest.all() {
				if d.id.Tenant == "acme" && d.id.Device == "d1" && d.topic == "ward/v1/d1/telemetry/temp" && d.payload == "21.5" {
					return true
				}
			}
			return false
		})
		codes, err := m.subscribe("ward/v1/d1/#")
		if err != nil || len(codes) != 1 || codes[0] != 1 {
			t.Fatalf("v%d subscribe: codes %v err %v", version, codes, err)
		}
		if err := h.b.Publish("acme", "d1", "twin/delta", []byte(`{"v":2}`), 1); err != nil {
			t.Fatal(err)
		}
		pk, err := m.read()
		if err != nil {
			t.Fatal(err)
		}
		if pk.FixedHeader.Type != packets.Publish || pk.TopicName != "ward/v1/d1/twin/delta" || !bytes.Equal(pk.Payload, []byte(`{"v":2}`)) {
			t.Fatalf("v%d got %+v", version, pk)
		}
		_ = m.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		m.c.Close()
		waitFor(t, "session gone", 2*time.Second, func() bool { return h.b.Sessions().Devices == 0 })
	}
}
