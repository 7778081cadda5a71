// Package agent is the device side of Ward: it enrolls a device with a
// Ward server over EST (RFC 7030), keeps the device's certificate fresh,
// and hands the current credential to whatever else on the device speaks
// TLS (the MQTT client, an OTA downloader).
//
// A firmware team links it into its own program:
//
//	ks, _ := keystore.Open("tpm:/dev/tpmrm0", keystore.WithStateDir("/var/lib/ward-agent/tpm"))
//	cfg := agent.Config{
//		Server:   "https://ward.example.com:8443",
//		CABundle: caPEM, // the only roots trusted for the server
//		Tenant:   "acme",
//		Device:   "pump-0042",
//		Keystore: ks,
//		StateDir: "/var/lib/ward-agent",
//	}
//	if _, err := agent.Enroll(ctx, cfg, agent.Token(secret)); err != nil { ... }
//	a, _ := agent.New(cfg)
//	go a.Run(ctx) // renews at about two thirds of the lifetime
//	tlsConfig := &tls.Config{GetClientCertificate: a.GetClientCertificate, ...}
//
// # Bootstrap credentials
//
// The first enrollment is authenticated by what the device was given at
// the factory: a one-time token ([Token]), a manufacturer certificate
// presented as the TLS client certificate of that one request ([X509]), a
// key derived from a group key ([Symmetric]; Config.Label names the group)
// or the TPM's endorsement key ([TPM]; with the tpm keystore, whose key the
// TPM certifies). After that the operational certificate alone is used.
//
// # Keys and renewal
//
// Every certificate has its own key, generated inside the keystore and
// never exported. Keys are named "device-<generation>": renewal makes the
// next generation's key, re-enrolls over mutual TLS with the current
// certificate, writes the new state, and only then destroys the old key.
// The state file (identity.json in StateDir) is replaced atomically, so a
// power cut or SIGKILL at any point leaves the device with either the old
// or the new credential; [New] removes keys left behind by an interrupted
// renewal.
//
// # Trust
//
// The server is trusted only through Config.CABundle; system roots are
// never consulted. The device's own chain (the tenant's issuing CA) is
// fetched with the cacerts operation over that authenticated connection
// and every issued certificate is verified against it before it is used.
package agent
