package wire

// EST (RFC 7030) paths, relative to https://<server>/.well-known/est/<label>/.
const (
	ESTPrefix         = "/.well-known/est/"
	ESTCACerts        = "cacerts"
	ESTSimpleEnroll   = "simpleenroll"
	ESTSimpleReenroll = "simplereenroll"
	ESTCSRAttrs       = "csrattrs"
	ESTServerKeyGen   = "serverkeygen"
)

// ESTPath returns the path of an EST operation for a label.
func ESTPath(label, op string) string {
	return ESTPrefix + label + "/" + op
}
