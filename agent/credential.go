package agent

import (
	"errors"
	"net/http"
)

// Credential is what a device presents to enroll for the first time: its
// bootstrap credential. Today that is an enrollment token ([Token],
// [BasicToken]); manufacturer X.509 certificates, TPM endorsement keys and
// symmetric keys will join them as further implementations in this
// package. The interface is sealed so that every kind is reviewed here.
type Credential interface {
	// authorize adds the credential to an enrollment request.
	authorize(req *http.Request, device string) error
	// String describes the credential without revealing it.
	String() string
}

// Token returns a one-time enrollment token credential, sent as
// "Authorization: Bearer <token>".
func Token(secret string) Credential { return tokenCredential{secret: secret} }

// BasicToken returns an enrollment token credential sent with HTTP Basic
// authentication, the device ID as user name and the token as password,
// for servers or proxies that only pass Basic credentials (RFC 7030
// §3.2.3).
func BasicToken(secret string) Credential { return tokenCredential{secret: secret, basic: true} }

type tokenCredential struct {
	secret string
	basic  bool
}

func (t tokenCredential) authorize(req *http.Request, device string) error {
	if t.secret == "" {
		return errors.New("the enrollment token is empty")
	}
	if t.basic {
		req.SetBasicAuth(device, t.secret)
	} else {
		req.Header.Set("Authorization", "Bearer "+t.secret)
	}
	return nil
}

// String never includes the secret, so a credential can be logged or
// printed with %v by mistake without leaking it.
func (t tokenCredential) String() string {
	if t.basic {
		return "enrollment token (HTTP Basic)"
	}
	return "enrollment token (Bearer)"
}

// GoString keeps %#v from printing the secret too.
func (t tokenCredential) GoString() string { return t.String() }
