package agent

import "net/http"

// HTTPClient returns an HTTPS client for the server's device endpoints
// beyond EST, such as the OTA repositories ([github.com/wardiot/ward/agent/ota.FetchRoots]
// and [github.com/wardiot/ward/agent/ota.ClientConfig]): it trusts only the
// CA bundle saved at enrollment and presents the device certificate
// current at each handshake, so connections opened after a renewal use
// the new credential. It sets no overall timeout, so that large downloads
// are bounded by their context instead.
func (a *Agent) HTTPClient() *http.Client {
	tr := a.est.transport(nil)
	tr.TLSClientConfig.GetClientCertificate = a.GetClientCertificate
	return &http.Client{Transport: tr}
}
