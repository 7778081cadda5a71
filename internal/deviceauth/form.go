package deviceauth

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Limits on the token request body.
const (
	// MaxFormLen bounds the form-encoded token request: an assertion of at
	// most MaxAssertionLen bytes, percent-encoding of the few characters
	// that need it, and a handful of short parameters.
	MaxFormLen = 2*MaxAssertionLen + 1024
	// maxFormParams bounds the parameters parsed; a token request has at
	// most six.
	maxFormParams = 16
)

var errForm = errors.New("malformed token request")

// parseForm parses an application/x-www-form-urlencoded body (RFC 6749
// appendix B). It refuses a parameter given twice (RFC 6749 §3.2: "MUST
// NOT be included more than once"), since two values invite one check to
// read the first and another the second. Empty values count as absent
// (§3.2), and unknown parameters are returned for the caller to ignore.
func parseForm(body []byte) (map[string]string, error) {
	if len(body) > MaxFormLen {
		return nil, fmt.Errorf("%w: body longer than %d bytes", errForm, MaxFormLen)
	}
	s := string(body)
	if strings.Count(s, "&") >= maxFormParams {
		return nil, fmt.Errorf("%w: more than %d parameters", errForm, maxFormParams)
	}
	vals, err := url.ParseQuery(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not form-urlencoded", errForm)
	}
	out := make(map[string]string, len(vals))
	for k, vs := range vals {
		var v string
		for _, x := range vs {
			if x == "" {
				continue
			}
			if v != "" {
				return nil, fmt.Errorf("%w: parameter %q given more than once", errForm, clip(k))
			}
			v = x
		}
		if v != "" {
			out[k] = v
		}
	}
	return out, nil
}
