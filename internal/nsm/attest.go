package nsm

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// Document is an attestation document's payload, with the fields and types
// of AWS's attestation_process.md, in the order real documents use.
// PublicKey, UserData and Nonce are null when the request left them out.
type Document struct {
	ModuleID    string   `cbor:"module_id"`
	Digest      string   `cbor:"digest"`
	Timestamp   uint64   `cbor:"timestamp"`
	PCRs        PCRMap   `cbor:"pcrs"`
	Certificate []byte   `cbor:"certificate"`
	CABundle    [][]byte `cbor:"cabundle"`
	PublicKey   []byte   `cbor:"public_key"`
	UserData    []byte   `cbor:"user_data"`
	Nonce       []byte   `cbor:"nonce"`
}

// PCRMap is the document's PCR index → value map. It encodes with its keys
// in ascending order, so that equal states give equal payloads.
type PCRMap map[uint16][]byte

// MarshalCBOR encodes the map with sorted keys.
func (p PCRMap) MarshalCBOR() ([]byte, error) { return sortedEncMode.Marshal(map[uint16][]byte(p)) }

// sortedEncMode sorts map keys. Only PCRMap uses it: it would sort the
// document's struct fields too, which real documents keep in declared order.
var sortedEncMode = func() cbor.EncMode {
	m, err := cbor.EncOptions{Sort: cbor.SortBytewiseLexical}.EncMode()
	if err != nil {
		panic(err)
	}
	return m
}()

// signer is the per-enclave leaf key with its chain.
type signer struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	cabundle [][]byte // root first, as in real documents
	cose     cose.Signer
}

func newSigner(ca *CA, cert *x509.Certificate, key *ecdsa.PrivateKey) (*signer, error) {
	s, err := cose.NewSigner(cose.AlgorithmES384, key)
	if err != nil {
		return nil, fmt.Errorf("COSE signer: %w", err)
	}
	return &signer{
		cert:     cert,
		key:      key,
		cabundle: [][]byte{ca.Root.Raw, ca.Intermediate.Raw},
		cose:     s,
	}, nil
}

// sign encodes doc and wraps it in an untagged COSE_Sign1 with ES384, as the
// NSM does: [protected {1: -35}, unprotected {}, payload, signature r‖s].
func (s *signer) sign(doc *Document) ([]byte, error) {
	doc.Certificate = s.cert.Raw
	doc.CABundle = s.cabundle
	payload, err := encMode.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("attestation payload: %w", err)
	}
	msg := cose.UntaggedSign1Message{
		Headers: cose.Headers{
			Protected:   cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES384},
			Unprotected: cose.UnprotectedHeader{},
		},
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, nil, s.cose); err != nil {
		return nil, fmt.Errorf("signing the attestation document: %w", err)
	}
	return msg.MarshalCBOR()
}
