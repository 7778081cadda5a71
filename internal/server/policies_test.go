package server_test

import (
	"testing"
)

// TestAssignedPolicyApplies: a policy assigned to a device replaces the
// default at the next connect (the assignment itself cuts the session).
func TestAssignedPolicyApplies(t *testing.T) {
	e := newESTEnv(t)
	if err := e.srv.RegisterSchema(ctx, "test", "acme", "temp", 1, []byte(tempSchema)); err != nil {
		t.Fatal(err)
	}
	a := e.enrollAgent(t, "ro-1")
	c, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PublishTelemetry("env", "temp", 1, []byte(`{"celsius":1}`)); err != nil {
		t.Fatalf("default policy: %v", err)
	}
	// A twin-only policy: no telemetry.
	doc := `{"version":1,"publish":{"allow":["ward/v1/${device}/twin/reported","ward/v1/${device}/twin/get"]},"subscribe":{"allow":["ward/v1/${device}/twin/#"]}}`
	if err := e.srv.PutPolicy(ctx, "test", "acme", "twin-only", []byte(doc)); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.AssignPolicy(ctx, "test", "acme", "device", "ro-1", "twin-only"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the assignment to cut the session", func() bool { return !c.Connected() })
	c2, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.PublishTelemetry("env", "temp", 1, []byte(`{"celsius":2}`)); err == nil {
		t.Fatal("telemetry allowed under a twin-only policy")
	}
	if err := e.srv.AssignPolicy(ctx, "test", "acme", "device", "ro-1", "no-such-policy"); err == nil {
		t.Fatal("assigned a policy that does not exist")
	}
	if err := e.srv.PutPolicy(ctx, "test", "acme", "bad", []byte(`{"version":1,"publish":{"allow":["$SYS/#"]}}`)); err == nil {
		t.Fatal("stored a policy granting $SYS")
	}
}
