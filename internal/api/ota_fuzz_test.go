package api

import (
	"bytes"
	"io"
	"net/http/httptest"
	"testing"
)

// FuzzReleaseParts feeds arbitrary multipart bodies to the release upload
// reader: it must never panic, never keep a part above its limit, and
// return the image only as the "image" part.
func FuzzReleaseParts(f *testing.F) {
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"sbom\"; filename=\"s\"\r\n\r\n{}\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"i\"\r\n\r\nIMG\r\n--b--\r\n"))
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"refvalues\"\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=\"refvalues\"\r\n\r\ny\r\n--b--\r\n"))
	f.Add([]byte("--b--\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/releases", bytes.NewReader(body))
		r.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		var spec ReleaseSpec
		img, err := releaseParts(httptest.NewRecorder(), r, &spec)
		if err != nil {
			return
		}
		if len(spec.SBOM) > MaxSBOMUpload || len(spec.RefValues) > MaxRefValuesUpload || len(spec.RefValuesSig) > maxRefValuesSigUpload {
			t.Fatal("kept a part above its limit")
		}
		_, _ = io.Copy(io.Discard, img) // a torn body is an error, never a panic
	})
}
