package est_test

import (
	"net/http/httptest"
	"testing"

	"github.com/wardiot/ward/internal/est/esttest"
	"github.com/wardiot/ward/wire"
)

// BenchmarkSimpleEnroll measures one simpleenroll through the handler with
// the crypto/x509 test CA: base64 and CSR decoding, P-256 signature check,
// issuing (one P-256 signature) and encoding the certs-only response.
func BenchmarkSimpleEnroll(b *testing.B) {
	ca := esttest.NewCA(b, label)
	ca.AddReusableToken("tok-bench", "dev-1")
	h := mustNew(b, ca)
	body := wire.EncodeBase64Body(csrDER(b, newKey(b), nil))
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, bearer(post(wire.ESTSimpleEnroll, body), "tok-bench"))
		if rec.Code != 200 {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}
