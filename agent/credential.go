package agent

import (
	"errors"
	"net/http"
	"time"
)

// Credential is what a device presents to enroll for the first time: its
// bootstrap credential. The four mechanisms of zero-touch provisioning
// are an enrollment token ([Token], [BasicToken]), a manufacturer X.509
// certificate ([X509]), a per-device symmetric key ([Symmetric]) and the
// TPM's endorsement key ([TPM]). The interface is sealed so that every
// kind is reviewed here.
type Credential interface {
	// authorize adds the credential to an enrollment request.
	authorize(req *http.Request, a *authContext) error
	// String describes the credential without revealing it.
	String() string
}

// authContext is what a credential may need to know about the request it
// authorizes.
type authContext struct {
	tenant, device, label string
	now                   time.Time
	rand                  randReader
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

func (t tokenCredential) authorize(req *http.Request, a *authContext) error {
	if t.secret == "" {
		return errors.New("the enrollment token is empty")
	}
	if t.basic {
		req.SetBasicAuth(a.device, t.secret)
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
