package eif

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// The signature section, as eif_build writes it and QEMU reads it: a CBOR
// array of {signing_certificate, signature} maps. serde_cbor, which
// nitro-cli uses, encodes a Vec<u8> as an array of small integers, not as a
// byte string, so the byte fields here are []uint16 on the wire.
type eifSignature struct {
	SigningCertificate []uint16 `cbor:"signing_certificate"`
	Signature          []uint16 `cbor:"signature"`
}

// pcrInfo is the COSE_Sign1 payload: the register signed and its value.
type pcrInfo struct {
	RegisterIndex int32    `cbor:"register_index"`
	RegisterValue []uint16 `cbor:"register_value"`
}

func toWire(b []byte) []uint16 {
	w := make([]uint16, len(b))
	for i, c := range b {
		w[i] = uint16(c)
	}
	return w
}

func fromWire(field string, w []uint16) ([]byte, error) {
	b := make([]byte, len(w))
	for i, c := range w {
		if c > 0xff {
			return nil, bad("signature "+field, "element %d is %d, not a byte", i, c)
		}
		b[i] = byte(c)
	}
	return b, nil
}

// coseAlgorithm picks the COSE algorithm for an ECDSA key, as nitro-cli
// does (it accepts P-256 and P-384 keys; AWS documents P-384).
func coseAlgorithm(pub crypto.PublicKey) (cose.Algorithm, error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return 0, fmt.Errorf("the signing key is %T; nitro-cli signs with ECDSA keys (P-384)", pub)
	}
	switch k.Curve {
	case elliptic.P384():
		return cose.AlgorithmES384, nil
	case elliptic.P256():
		return cose.AlgorithmES256, nil
	case elliptic.P521():
		return cose.AlgorithmES512, nil
	}
	return 0, fmt.Errorf("the signing key's curve %s is not supported (use P-384)", k.Curve.Params().Name)
}

// Sign adds a signature section to im: a COSE_Sign1 (untagged, as
// eif_build writes it) by key over {register_index: 0, register_value:
// PCR0}, next to the certificate's DER. certDER must hold key's public key.
// ECDSA signatures are randomised, so two signed builds differ in the
// signature's bytes; their PCRs (PCR8 included) do not.
func (im *Image) Sign(certDER []byte, key crypto.Signer) error {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return fmt.Errorf("eif: signing certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return fmt.Errorf("eif: the private key does not belong to the signing certificate (%s)", cert.Subject)
	}
	alg, err := coseAlgorithm(key.Public())
	if err != nil {
		return fmt.Errorf("eif: %w", err)
	}
	im.Signature = nil
	m, err := im.Measure()
	if err != nil {
		return err
	}
	payload, err := cbor.Marshal(pcrInfo{0, toWire(m.PCR0[:])})
	if err != nil {
		return err
	}
	signer, err := cose.NewSigner(alg, key)
	if err != nil {
		return fmt.Errorf("eif: %w", err)
	}
	msg := cose.UntaggedSign1Message{
		Headers: cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: alg}},
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, nil, signer); err != nil {
		return fmt.Errorf("eif: signing: %w", err)
	}
	sig, err := msg.MarshalCBOR()
	if err != nil {
		return err
	}
	im.Signature, err = cbor.Marshal([]eifSignature{{toWire(certDER), toWire(sig)}})
	return err
}

// parseSignature returns the first signature's certificate DER and
// COSE_Sign1 bytes.
func parseSignature(section []byte) (cert, sig []byte, err error) {
	var sigs []eifSignature
	if err := cbor.Unmarshal(section, &sigs); err != nil {
		return nil, nil, bad("signature", "not the CBOR array of {signing_certificate, signature} nitro-cli writes: %v", err)
	}
	if len(sigs) == 0 {
		return nil, nil, bad("signature", "the array is empty")
	}
	if cert, err = fromWire("signing_certificate", sigs[0].SigningCertificate); err != nil {
		return nil, nil, err
	}
	if sig, err = fromWire("signature", sigs[0].Signature); err != nil {
		return nil, nil, err
	}
	return cert, sig, nil
}

// VerifySignature checks the file's signature: the certificate parses, its
// key verifies the COSE_Sign1, and the signed payload is register 0 with
// the file's PCR0. It returns the certificate. An unsigned file is an error.
func (f *File) VerifySignature(m Measurements) (*x509.Certificate, error) {
	section, err := f.Signature()
	if err != nil {
		return nil, err
	}
	if section == nil {
		return nil, fmt.Errorf("eif: the image is not signed")
	}
	certDER, sigBytes, err := parseSignature(section)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, bad("signature signing_certificate", "%v", err)
	}
	var msg cose.UntaggedSign1Message
	if err := msg.UnmarshalCBOR(sigBytes); err != nil {
		var tagged cose.Sign1Message
		if err2 := tagged.UnmarshalCBOR(sigBytes); err2 != nil {
			return nil, bad("signature", "not a COSE_Sign1: %v", err)
		}
		msg = cose.UntaggedSign1Message(tagged)
	}
	alg, err := msg.Headers.Protected.Algorithm()
	if err != nil {
		return nil, bad("signature", "COSE algorithm: %v", err)
	}
	verifier, err := cose.NewVerifier(alg, cert.PublicKey)
	if err != nil {
		return nil, bad("signature", "certificate key and COSE algorithm %v: %v", alg, err)
	}
	if err := msg.Verify(nil, verifier); err != nil {
		return nil, bad("signature", "does not verify with the certificate's key (%s): %v", cert.Subject, err)
	}
	var info pcrInfo
	if err := cbor.Unmarshal(msg.Payload, &info); err != nil {
		return nil, bad("signature payload", "not a PcrInfo: %v", err)
	}
	val, err := fromWire("register_value", info.RegisterValue)
	if err != nil {
		return nil, err
	}
	if info.RegisterIndex != 0 || !bytes.Equal(val, m.PCR0[:]) {
		return nil, bad("signature payload", "signs PCR%d = %x, but the image's PCR0 is %s", info.RegisterIndex, val, m.PCR0)
	}
	return cert, nil
}
