module github.com/wardiot/ward

go 1.26.8

require (
	github.com/ThalesGroup/crypto11 v1.5.0
	golang.org/x/crypto v0.58.0
)

require (
	github.com/miekg/pkcs11 v1.1.1 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/thales-e-security/pool v0.0.2 // indirect
)
