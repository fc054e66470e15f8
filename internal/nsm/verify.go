package nsm

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// Verify checks an attestation document the way a relying party does: the
// COSE_Sign1 ES384 signature with the leaf certificate's key, and the chain
// leaf → cabundle → root at time now. It returns the payload. The
// simulator's demo uses it; the tests use an independent verifier
// (testdata/verify.py) instead, since this one shares libraries with the
// signer.
func Verify(doc []byte, root *x509.Certificate, now time.Time) (*Document, error) {
	var msg cose.UntaggedSign1Message
	if err := msg.UnmarshalCBOR(doc); err != nil {
		return nil, fmt.Errorf("attestation document: not an untagged COSE_Sign1: %w", err)
	}
	var d Document
	if err := cbor.Unmarshal(msg.Payload, &d); err != nil {
		return nil, fmt.Errorf("attestation document payload: %w", err)
	}
	leaf, err := x509.ParseCertificate(d.Certificate)
	if err != nil {
		return nil, fmt.Errorf("attestation document certificate: %w", err)
	}
	if len(d.CABundle) == 0 {
		return nil, errors.New("attestation document: empty cabundle")
	}
	inter := x509.NewCertPool()
	for i, der := range d.CABundle[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("attestation document cabundle[%d]: %w", i+1, err)
		}
		inter.AddCert(c)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("attestation document chain: %w", err)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("attestation document: the leaf key is not ECDSA")
	}
	v, err := cose.NewVerifier(cose.AlgorithmES384, pub)
	if err != nil {
		return nil, err
	}
	if err := msg.Verify(nil, v); err != nil {
		return nil, fmt.Errorf("attestation document signature: %w", err)
	}
	return &d, nil
}
