package nsm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Files of a CA directory (--nsm-ca DIR).
const (
	RootCertFile         = "root.pem"
	RootKeyFile          = "root.key"
	IntermediateCertFile = "intermediate.pem"
	IntermediateKeyFile  = "intermediate.key"
)

// CA is the simulator's certificate authority: a self-signed P-384 root and
// an intermediate that issues per-enclave leaf certificates. Real NSM
// documents chain to AWS_NitroEnclaves_Root-G1 through several
// intermediates; ours chain to a root that exists only on this host.
type CA struct {
	Root, Intermediate       *x509.Certificate
	rootKey, intermediateKey *ecdsa.PrivateKey
}

// NewCA generates a root and an intermediate.
func NewCA() (*CA, error) {
	now := time.Now().Add(-time.Hour)
	rootKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	root, err := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "nitroinit simulator NSM root (not AWS)", Organization: []string{"nitroinit simulator"}},
		NotBefore:             now,
		NotAfter:              now.AddDate(30, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("simulator root CA: %w", err)
	}
	intKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	inter, err := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "nitroinit simulator NSM intermediate", Organization: []string{"nitroinit simulator"}},
		NotBefore:             now,
		NotAfter:              now.AddDate(30, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}, root, &intKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("simulator intermediate CA: %w", err)
	}
	return &CA{Root: root, Intermediate: inter, rootKey: rootKey, intermediateKey: intKey}, nil
}

// issue signs tmpl (given a random serial) with signer's key; parent nil
// means self-signed.
func issue(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.SignatureAlgorithm = x509.ECDSAWithSHA384
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// Leaf issues a per-enclave signing certificate for moduleID and returns it
// with its key. Like real NSM leaves it is short-lived.
func (ca *CA) Leaf(moduleID string, validFor time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().Add(-time.Minute)
	cert, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: moduleID, Organization: []string{"nitroinit simulator"}},
		NotBefore:   now,
		NotAfter:    now.Add(validFor),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}, ca.Intermediate, &key.PublicKey, ca.intermediateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("leaf certificate for %s: %w", moduleID, err)
	}
	return cert, key, nil
}

// RootPEM is the root certificate in PEM, what a verifier trusts.
func (ca *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw})
}

// Save writes the CA into dir (created 0700; keys 0600).
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("NSM CA directory: %w", err)
	}
	for _, f := range []struct {
		name string
		blk  func() (*pem.Block, error)
		mode fs.FileMode
	}{
		{RootCertFile, func() (*pem.Block, error) { return &pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw}, nil }, 0o644},
		{IntermediateCertFile, func() (*pem.Block, error) { return &pem.Block{Type: "CERTIFICATE", Bytes: ca.Intermediate.Raw}, nil }, 0o644},
		{RootKeyFile, func() (*pem.Block, error) { return keyBlock(ca.rootKey) }, 0o600},
		{IntermediateKeyFile, func() (*pem.Block, error) { return keyBlock(ca.intermediateKey) }, 0o600},
	} {
		blk, err := f.blk()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(blk), f.mode); err != nil {
			return fmt.Errorf("NSM CA: %w", err)
		}
	}
	return nil
}

func keyBlock(k *ecdsa.PrivateKey) (*pem.Block, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return &pem.Block{Type: "PRIVATE KEY", Bytes: der}, nil
}

// LoadOrCreateCA loads the CA saved in dir, or, when dir has none of its
// files, generates one and saves it there, so that runs given the same dir
// share a root.
func LoadOrCreateCA(dir string) (*CA, error) {
	if _, err := os.Stat(filepath.Join(dir, RootCertFile)); errors.Is(err, fs.ErrNotExist) {
		ca, err := NewCA()
		if err != nil {
			return nil, err
		}
		return ca, ca.Save(dir)
	}
	return LoadCA(dir)
}

// LoadCA reads a CA saved by Save.
func LoadCA(dir string) (*CA, error) {
	ca := &CA{}
	var err error
	if ca.Root, err = readCert(filepath.Join(dir, RootCertFile)); err != nil {
		return nil, err
	}
	if ca.Intermediate, err = readCert(filepath.Join(dir, IntermediateCertFile)); err != nil {
		return nil, err
	}
	if ca.rootKey, err = readKey(filepath.Join(dir, RootKeyFile)); err != nil {
		return nil, err
	}
	if ca.intermediateKey, err = readKey(filepath.Join(dir, IntermediateKeyFile)); err != nil {
		return nil, err
	}
	if err := ca.Intermediate.CheckSignatureFrom(ca.Root); err != nil {
		return nil, fmt.Errorf("NSM CA %s: %s is not signed by %s: %w", dir, IntermediateCertFile, RootCertFile, err)
	}
	if !ca.intermediateKey.PublicKey.Equal(ca.Intermediate.PublicKey) {
		return nil, fmt.Errorf("NSM CA %s: %s does not match %s", dir, IntermediateKeyFile, IntermediateCertFile)
	}
	return ca, nil
}

func readPEM(path, typ string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("NSM CA: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("NSM CA: %s: no PEM %q block (write the directory with `initramfs boot --nsm-ca DIR` on an empty DIR)", path, typ)
	}
	return blk.Bytes, nil
}

func readCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("NSM CA: %s: %w", path, err)
	}
	return c, nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("NSM CA: %s: %w", path, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P384() {
		return nil, fmt.Errorf("NSM CA: %s: want a P-384 ECDSA key", path)
	}
	return ec, nil
}
