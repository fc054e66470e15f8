package nsm

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// RandomSize is how many bytes GetRandom returns, as the real NSM does.
const RandomSize = 256

// LeafValidity is how long a per-enclave signing certificate is valid. Real
// NSM leaves live for hours and are renewed; a simulator run is short.
const LeafValidity = 24 * time.Hour

// Config configures a Module.
type Config struct {
	// CA signs the per-enclave leaf; nil means a new CA (NewCA).
	CA *CA
	// PCRs are the initial values (PCR0-4, 8); the others start at zero.
	PCRs map[int]PCR
	// ModuleID names the enclave; "" means a random i-…-enc… id.
	ModuleID string
	// Now is the clock for document timestamps; nil means time.Now.
	Now func() time.Time
}

// Module is one simulated enclave's NSM: PCRs, lock bits and the leaf key.
// Handle is safe for concurrent use and serialises requests, as the device's
// single virtqueue does.
type Module struct {
	mu       sync.Mutex
	bank     *Bank
	ca       *CA
	signer   *signer
	moduleID string
	now      func() time.Time
	rand     io.Reader
}

// New creates a Module.
func New(cfg Config) (*Module, error) {
	m := &Module{ca: cfg.CA, moduleID: cfg.ModuleID, now: cfg.Now, rand: rand.Reader, bank: NewBank(cfg.PCRs)}
	if m.now == nil {
		m.now = time.Now
	}
	if m.moduleID == "" {
		var b [8]byte
		rand.Read(b[:])
		m.moduleID = "i-00000000000000000-enc" + hex.EncodeToString(b[:])
	}
	if m.ca == nil {
		ca, err := NewCA()
		if err != nil {
			return nil, err
		}
		m.ca = ca
	}
	cert, key, err := m.ca.Leaf(m.moduleID, LeafValidity)
	if err != nil {
		return nil, err
	}
	if m.signer, err = newSigner(m.ca, cert, key); err != nil {
		return nil, err
	}
	return m, nil
}

// CA returns the module's certificate authority.
func (m *Module) CA() *CA { return m.ca }

// ModuleID is the enclave's module_id.
func (m *Module) ModuleID() string { return m.moduleID }

// PCRs returns the current PCR values.
func (m *Module) PCRs() [nitro.NSMPCRCount]PCR {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bank.Values()
}

// Handle answers one raw request with one raw response; errors are
// {"Error": code} responses, never Go errors.
func (m *Module) Handle(raw []byte) []byte {
	req, err := DecodeRequest(raw)
	if err != nil {
		var re *RequestError
		if errors.As(err, &re) {
			return EncodeError(re.Code)
		}
		return EncodeError(InvalidArgument)
	}
	b, err := m.handle(req)
	if err != nil {
		return EncodeError(InternalError)
	}
	return b
}

func (m *Module) handle(r Request) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch r.Kind {
	case KindDescribePCR:
		v, locked, code := m.bank.Describe(r.Index)
		if code != Success {
			return EncodeError(code), nil
		}
		return encodeResponse(r.Kind, DescribePCRResponse{Lock: locked, Data: v[:]})
	case KindExtendPCR:
		v, code := m.bank.Extend(r.Index, r.Data)
		if code != Success {
			return EncodeError(code), nil
		}
		return encodeResponse(r.Kind, ExtendPCRResponse{Data: v[:]})
	case KindLockPCR:
		if code := m.bank.Lock(r.Index); code != Success {
			return EncodeError(code), nil
		}
		return encodeResponse(r.Kind, nil)
	case KindLockPCRs:
		if code := m.bank.LockRange(r.Range); code != Success {
			return EncodeError(code), nil
		}
		return encodeResponse(r.Kind, nil)
	case KindDescribeNSM:
		return encodeResponse(r.Kind, DescribeNSMResponse{
			VersionMajor: 1, ModuleID: m.moduleID, MaxPCRs: nitro.NSMPCRCount,
			LockedPCRs: m.bank.Locked(), Digest: "SHA384",
		})
	case KindGetRandom:
		b := make([]byte, RandomSize)
		if _, err := io.ReadFull(m.rand, b); err != nil {
			return nil, err
		}
		return encodeResponse(r.Kind, GetRandomResponse{Random: b})
	case KindAttestation:
		doc := &Document{
			ModuleID:  m.moduleID,
			Digest:    "SHA384",
			Timestamp: uint64(m.now().UnixMilli()),
			PCRs:      make(PCRMap, nitro.NSMPCRCount),
			PublicKey: r.PublicKey,
			UserData:  r.UserData,
			Nonce:     r.Nonce,
		}
		vals := m.bank.Values()
		for i := range vals {
			doc.PCRs[uint16(i)] = vals[i][:]
		}
		d, err := m.signer.sign(doc)
		if err != nil {
			return nil, err
		}
		return encodeResponse(r.Kind, AttestationResponse{Document: d})
	}
	return EncodeError(InvalidOperation), nil
}

// PCRsJSON renders PCRs as {"PCR0": "<hex>", ...} for <run dir>/nsm/pcrs.json.
func PCRsJSON(p [nitro.NSMPCRCount]PCR) []byte {
	m := make(map[string]string, len(p))
	for i, v := range p {
		m[fmt.Sprintf("PCR%d", i)] = hex.EncodeToString(v[:])
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}
