// Package nsm is the simulator's Nitro Secure Module: the NSM API's requests
// and responses in CBOR as the aws-nitro-enclaves-nsm-api crate encodes them,
// the 32 PCRs, and attestation documents signed (COSE_Sign1, ES384) by a
// per-enclave key under a simulator root CA. A Module answers raw request
// bytes with raw response bytes; Serve puts it on a listener for the guest's
// simulated /dev/nsm. See docs/nsm.md.
package nsm

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// ErrorCode is the NSM API's error code, sent as {"Error": code}.
type ErrorCode string

// The API's error codes (aws-nitro-enclaves-nsm-api ErrorCode).
const (
	Success          ErrorCode = "Success"
	InvalidArgument  ErrorCode = "InvalidArgument"
	InvalidIndex     ErrorCode = "InvalidIndex"
	InvalidResponse  ErrorCode = "InvalidResponse"
	ReadOnlyIndex    ErrorCode = "ReadOnlyIndex"
	InvalidOperation ErrorCode = "InvalidOperation"
	BufferTooSmall   ErrorCode = "BufferTooSmall"
	InputTooLarge    ErrorCode = "InputTooLarge"
	InternalError    ErrorCode = "InternalError"
)

// Request kinds: the names of the API's Request variants.
const (
	KindDescribePCR = "DescribePCR"
	KindExtendPCR   = "ExtendPCR"
	KindLockPCR     = "LockPCR"
	KindLockPCRs    = "LockPCRs"
	KindDescribeNSM = "DescribeNSM"
	KindAttestation = "Attestation"
	KindGetRandom   = "GetRandom"
)

// Request is one decoded NSM request. Kind says which fields mean anything.
type Request struct {
	Kind string
	// Index is the PCR of DescribePCR, ExtendPCR and LockPCR.
	Index uint16
	// Data is ExtendPCR's data.
	Data []byte
	// Range is LockPCRs' count: PCRs [0, Range) are locked.
	Range uint16
	// UserData, Nonce and PublicKey are Attestation's optional fields; nil
	// means absent (CBOR null or missing).
	UserData, Nonce, PublicKey []byte
}

// RequestError is a request that cannot be decoded or is out of bounds; Code
// is what the NSM answers.
type RequestError struct {
	Code ErrorCode
	Msg  string
}

func (e *RequestError) Error() string { return fmt.Sprintf("nsm: %s: %s", e.Code, e.Msg) }

func badRequest(code ErrorCode, format string, args ...any) error {
	return &RequestError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// decMode bounds what the decoder builds: a request is at most
// nitro.NSMRequestMax bytes, but nesting and counts are limited too so that
// a hostile request cannot make the host allocate much.
var decMode = func() cbor.DecMode {
	m, err := cbor.DecOptions{
		MaxNestedLevels:  4,
		MaxArrayElements: 16,
		MaxMapPairs:      16,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return m
}()

// encMode encodes struct fields in declaration order, as serde does.
var encMode = func() cbor.EncMode {
	m, err := cbor.EncOptions{}.EncMode()
	if err != nil {
		panic(err)
	}
	return m
}()

// The one-key maps' bodies, with serde's field names.
type (
	indexBody struct {
		Index *uint16 `cbor:"index"`
	}
	extendBody struct {
		Index *uint16 `cbor:"index"`
		Data  *[]byte `cbor:"data"`
	}
	rangeBody struct {
		Range *uint16 `cbor:"range"`
	}
	attestationBody struct {
		UserData  []byte `cbor:"user_data"`
		Nonce     []byte `cbor:"nonce"`
		PublicKey []byte `cbor:"public_key"`
	}
)

// DecodeRequest decodes one request: a text string for DescribeNSM and
// GetRandom, a one-key map for the others. Errors are *RequestError.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) > nitro.NSMRequestMax {
		return Request{}, badRequest(InputTooLarge, "request of %d bytes, at most %d", len(b), nitro.NSMRequestMax)
	}
	var unit string
	if err := decMode.Unmarshal(b, &unit); err == nil {
		switch unit {
		case KindDescribeNSM, KindGetRandom:
			return Request{Kind: unit}, nil
		}
		return Request{}, badRequest(InvalidArgument, "unknown request %q", unit)
	}
	var m map[string]cbor.RawMessage
	if err := decMode.Unmarshal(b, &m); err != nil {
		return Request{}, badRequest(InvalidArgument, "not a CBOR text string or map: %v", err)
	}
	if len(m) != 1 {
		return Request{}, badRequest(InvalidArgument, "request map has %d keys, want 1", len(m))
	}
	for kind, body := range m {
		return decodeBody(kind, body)
	}
	panic("unreachable")
}

func decodeBody(kind string, body cbor.RawMessage) (Request, error) {
	r := Request{Kind: kind}
	var err error
	switch kind {
	case KindDescribePCR, KindLockPCR:
		var v indexBody
		if err = decMode.Unmarshal(body, &v); err == nil && v.Index == nil {
			err = errors.New(`missing field "index"`)
		}
		if err == nil {
			r.Index = *v.Index
		}
	case KindExtendPCR:
		var v extendBody
		if err = decMode.Unmarshal(body, &v); err == nil && (v.Index == nil || v.Data == nil) {
			err = errors.New(`missing field "index" or "data"`)
		}
		if err == nil {
			r.Index, r.Data = *v.Index, *v.Data
			if len(r.Data) > nitro.NSMFieldMax {
				return Request{}, badRequest(InputTooLarge, "ExtendPCR data of %d bytes, at most %d", len(r.Data), nitro.NSMFieldMax)
			}
		}
	case KindLockPCRs:
		var v rangeBody
		if err = decMode.Unmarshal(body, &v); err == nil && v.Range == nil {
			err = errors.New(`missing field "range"`)
		}
		if err == nil {
			r.Range = *v.Range
		}
	case KindAttestation:
		var v attestationBody
		if err = decMode.Unmarshal(body, &v); err == nil {
			r.UserData, r.Nonce, r.PublicKey = v.UserData, v.Nonce, v.PublicKey
			for _, f := range []struct {
				name string
				b    []byte
			}{{"user_data", v.UserData}, {"nonce", v.Nonce}, {"public_key", v.PublicKey}} {
				if len(f.b) > nitro.NSMFieldMax {
					return Request{}, badRequest(InputTooLarge, "Attestation %s of %d bytes, at most %d", f.name, len(f.b), nitro.NSMFieldMax)
				}
			}
		}
	default:
		return Request{}, badRequest(InvalidArgument, "unknown request %q", kind)
	}
	if err != nil {
		return Request{}, badRequest(InvalidArgument, "%s: %v", kind, err)
	}
	return r, nil
}

// Response bodies, with serde's field names.
type (
	// DescribePCRResponse is DescribePCR's answer.
	DescribePCRResponse struct {
		Lock bool   `cbor:"lock"`
		Data []byte `cbor:"data"`
	}
	// ExtendPCRResponse is ExtendPCR's answer: the new value.
	ExtendPCRResponse struct {
		Data []byte `cbor:"data"`
	}
	// DescribeNSMResponse is DescribeNSM's answer.
	DescribeNSMResponse struct {
		VersionMajor uint16   `cbor:"version_major"`
		VersionMinor uint16   `cbor:"version_minor"`
		VersionPatch uint16   `cbor:"version_patch"`
		ModuleID     string   `cbor:"module_id"`
		MaxPCRs      uint16   `cbor:"max_pcrs"`
		LockedPCRs   []uint16 `cbor:"locked_pcrs"`
		Digest       string   `cbor:"digest"`
	}
	// AttestationResponse carries the COSE_Sign1 document.
	AttestationResponse struct {
		Document []byte `cbor:"document"`
	}
	// GetRandomResponse carries random bytes.
	GetRandomResponse struct {
		Random []byte `cbor:"random"`
	}
)

// encodeResponse encodes a response variant: a unit variant (LockPCR,
// LockPCRs) as its name, the others as {name: body}.
func encodeResponse(kind string, body any) ([]byte, error) {
	if body == nil {
		return encMode.Marshal(kind)
	}
	return encMode.Marshal(map[string]any{kind: body})
}

// EncodeError encodes {"Error": code}.
func EncodeError(code ErrorCode) []byte {
	b, err := encMode.Marshal(map[string]ErrorCode{"Error": code})
	if err != nil {
		panic(err) // a map of two strings always encodes
	}
	return b
}
