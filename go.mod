module github.com/wardiot/ward

go 1.26.8

require (
	github.com/ThalesGroup/crypto11 v1.5.0
	github.com/google/go-tpm v0.9.8
)

require (
	github.com/miekg/pkcs11 v1.1.1 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/thales-e-security/pool v0.0.2 // indirect
	golang.org/x/sys v0.8.0 // indirect
)
