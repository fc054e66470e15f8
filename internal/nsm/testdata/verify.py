#!/usr/bin/env python3
"""Verify an NSM attestation document independently of nitroinit's Go code.

Usage: verify.py ROOT_PEM DOCUMENT_FILE
Uses only python3-cbor2 and python3-cryptography (Debian packages): parses the
COSE_Sign1 structure, checks the ES384 signature over the Sig_structure with
the leaf certificate's key, checks the chain leaf <- cabundle[-1] <- ... <-
cabundle[0] and that cabundle[0] is the given root, and checks validity times.
On success prints the payload as JSON (bytes as hex) and exits 0; otherwise
prints the reason to stderr and exits 1.
"""
import datetime
import json
import sys

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def fail(msg):
    print("verify.py: " + msg, file=sys.stderr)
    sys.exit(1)


def check_issued(cert, issuer, what):
    if cert.issuer != issuer.subject:
        fail(what + ": issuer name does not match")
    try:
        issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                   ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        fail(what + ": bad certificate signature")


def main():
    root = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
    raw = open(sys.argv[2], "rb").read()
    msg = cbor2.loads(raw)
    if isinstance(msg, cbor2.CBORTag):
        fail("document is tagged (tag %d); the NSM sends an untagged COSE_Sign1" % msg.tag)
    if not isinstance(msg, list) or len(msg) != 4:
        fail("not a COSE_Sign1 array of 4")
    protected, unprotected, payload, sig = msg
    if cbor2.loads(protected) != {1: -35}:
        fail("protected header %r, want {1: -35} (ES384)" % cbor2.loads(protected))
    if unprotected != {}:
        fail("unprotected header %r, want {}" % unprotected)
    if len(sig) != 96:
        fail("signature of %d bytes, want 96 (r||s)" % len(sig))
    doc = cbor2.loads(payload)
    leaf = x509.load_der_x509_certificate(doc["certificate"])
    bundle = [x509.load_der_x509_certificate(c) for c in doc["cabundle"]]
    if not bundle:
        fail("empty cabundle")
    der = serialization.Encoding.DER
    if bundle[0].public_bytes(der) != root.public_bytes(der):
        fail("cabundle[0] is not the trusted root")
    check_issued(root, root, "root")
    chain = bundle + [leaf]
    for i in range(1, len(chain)):
        check_issued(chain[i], chain[i - 1], "certificate %d" % i)
    now = datetime.datetime.utcnow()
    for c in chain:
        if not (c.not_valid_before <= now <= c.not_valid_after):
            fail("certificate %s not valid now" % c.subject.rfc4514_string())
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    r = int.from_bytes(sig[:48], "big")
    s = int.from_bytes(sig[48:], "big")
    try:
        leaf.public_key().verify(encode_dss_signature(r, s), sig_structure, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        fail("bad COSE signature")
    out = {}
    for k, v in doc.items():
        if k in ("certificate", "cabundle"):
            continue
        if k == "pcrs":
            out[k] = {str(i): p.hex() for i, p in v.items()}
        elif isinstance(v, bytes):
            out[k] = v.hex()
        else:
            out[k] = v
    out["keys"] = list(doc.keys())
    json.dump(out, sys.stdout)


main()
