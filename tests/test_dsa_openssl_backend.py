"""DSA through the system OpenSSL: the path DSA takes once ``cryptography`` drops it (51 deprecates it).

``IMGSIGN_DSA_BACKEND=openssl`` forces that path while ``cryptography`` still has DSA, so it runs in CI
today: keys, signing, verification, keygen, certificates and chains, with interop against the openssl
command line and cursive both ways.  ``cryptography``'s DSA is the reference on the other side, so both
paths agree on every signature.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imgsign import errors, keygen
from imgsign._internal import openssl as openssl_backend
from imgsign._internal import pyca_dsa
from imgsign.algorithms import HashMethod, KeyType
from imgsign.certificates import certificate_public_key, load_certificate
from imgsign.chain import TrustAnchors, validate_chain
from imgsign.keys import loading
from imgsign.keys.inprocess import CryptographyPrivateKey, CryptographyPublicKey
from tests.conftest import CERT_UUID, HASHES, cert_of, key_of, openssl, pki, run_cli

OPENSSL_DSA = {"IMGSIGN_DSA_BACKEND": "openssl"}


@pytest.fixture
def dsa_via_openssl(monkeypatch):
    monkeypatch.setenv("IMGSIGN_DSA_BACKEND", "openssl")


def digest(hash_method: HashMethod, data: bytes = b"an image") -> bytes:
    h = hash_method.new()
    h.update(data)
    return h.digest()


# --- the choice, in keys/loading.py ---------------------------------------------------------------------------

def test_the_choice_follows_cryptography_and_the_variable(monkeypatch):
    monkeypatch.delenv("IMGSIGN_DSA_BACKEND", raising=False)
    assert loading.uses_openssl(KeyType.DSA) is (not pyca_dsa.AVAILABLE)
    assert loading.uses_openssl(KeyType.ECC_SECT571R1) and not loading.uses_openssl(KeyType.RSA_PSS)
    monkeypatch.setenv("IMGSIGN_DSA_BACKEND", "openssl")
    assert loading.uses_openssl(KeyType.DSA)
    assert not loading.uses_openssl(KeyType.ECC_SECP384R1)
    monkeypatch.setenv("IMGSIGN_DSA_BACKEND", "auto")
    monkeypatch.setattr(pyca_dsa, "AVAILABLE", False)  # a cryptography that has removed DSA
    assert loading.uses_openssl(KeyType.DSA)
    monkeypatch.setenv("IMGSIGN_DSA_BACKEND", "bogus")
    with pytest.raises(errors.InputError, match="IMGSIGN_DSA_BACKEND is auto or openssl"):
        loading.uses_openssl(KeyType.DSA)


def test_keys_and_certificates_go_to_openssl(dsa_via_openssl):
    private = loading.load_private_key(key_of("DSA").read_bytes())
    assert isinstance(private, openssl_backend.OpenSSLPrivateKey)
    assert private.key_type is KeyType.DSA and private.key_size == 2048
    public = certificate_public_key(load_certificate(cert_of("DSA").read_bytes()))
    assert isinstance(public, openssl_backend.OpenSSLPublicKey)
    assert public.describe() == "DSA 2048-bit (via OpenSSL)"
    assert public.spki_der() == private.public_key().spki_der()
    # The same key in cryptography has the same public key.
    with pyca_dsa.quiet():
        reference = CryptographyPrivateKey(serialization.load_pem_private_key(key_of("DSA").read_bytes(), None))  # type: ignore[arg-type]
    assert reference.public_key().spki_der() == public.spki_der()


@pytest.mark.parametrize("hash_name", HASHES)
def test_signatures_agree_with_cryptography_both_ways(dsa_via_openssl, hash_name):
    hash_method = HashMethod.parse(hash_name)
    message = digest(hash_method)
    via_openssl = loading.load_private_key(key_of("DSA").read_bytes())
    with pyca_dsa.quiet():
        reference_key = serialization.load_pem_private_key(key_of("DSA").read_bytes(), None)
    reference = CryptographyPrivateKey(reference_key)  # type: ignore[arg-type]
    reference_public = CryptographyPublicKey(reference_key.public_key())
    openssl_public = via_openssl.public_key()
    reference_public.verify_digest(via_openssl.sign_digest(message, hash_method), message, hash_method)
    openssl_public.verify_digest(reference.sign_digest(message, hash_method), message, hash_method)
    with pytest.raises(errors.InvalidSignature):
        openssl_public.verify_digest(reference.sign_digest(message, hash_method), digest(hash_method, b"x"),
                                     hash_method)
    with pytest.raises(errors.MalformedSignature):
        openssl_public.verify_digest(b"\x30\x03\x02\x01\x01", message, hash_method)


def test_encrypted_dsa_key(dsa_via_openssl, tmp_path):
    key, pem = keygen.new_key(KeyType.DSA, 2048, passphrase=b"correct horse")
    assert isinstance(key, openssl_backend.OpenSSLPrivateKey) and b"ENCRYPTED" in pem
    again = loading.load_private_key(pem, b"correct horse")
    assert again.public_key().spki_der() == key.public_key().spki_der()
    with pytest.raises(errors.PrivateKeyError, match="wrong passphrase"):
        loading.load_private_key(pem, b"wrong")


@pytest.mark.parametrize("bits", [1024, 2048])
def test_keygen_certificates_and_chains(dsa_via_openssl, bits):
    identity = keygen.generate(KeyType.DSA, bits=bits)
    cert = load_certificate(identity.cert_pem)
    key = loading.load_private_key(identity.key_pem)
    assert isinstance(key, openssl_backend.OpenSSLPrivateKey) and key.key_size == bits
    public = certificate_public_key(cert)
    assert isinstance(public, openssl_backend.OpenSSLPublicKey) and public.spki_der() == key.public_key().spki_der()
    # The self-signed certificate carries a DSA signature the X.509 code of cryptography accepts.
    with pyca_dsa.quiet():
        cert.verify_directly_issued_by(cert)
    # A DSA leaf issued by the test PKI's intermediate CA chains to its root.
    ca = keygen.Issuer(load_certificate(pki("intermediate-ca.pem").read_bytes()),
                       loading.load_private_key(pki("intermediate-ca.key").read_bytes()))
    leaf = load_certificate(keygen.generate(KeyType.DSA, bits=bits, issuer=ca).cert_pem)
    path = validate_chain(leaf, TrustAnchors([load_certificate(pki("root-ca.pem").read_bytes())],
                                             [load_certificate(pki("intermediate-ca.pem").read_bytes())]))
    assert [c.subject for c in path] == [leaf.subject, ca.certificate.subject,
                                        load_certificate(pki("root-ca.pem").read_bytes()).subject]


def test_dsa_key_signs_certificates_and_requests(dsa_via_openssl):
    """A DSA key signs its own certificate and its certificate request through the OpenSSL backend."""
    key = loading.load_private_key(key_of("DSA").read_bytes())
    subject = keygen.parse_subject("CN=signed through openssl")
    cert = keygen.issue_certificate(subject, key.public_key(), key)
    request = keygen.certificate_request(subject, key)
    with pyca_dsa.quiet():
        cert.verify_directly_issued_by(cert)
        assert request.is_signature_valid
    assert cert.signature_algorithm_oid.dotted_string == "2.16.840.1.101.3.4.3.2"  # dsa-with-SHA256


def test_embedded_key_manager_makes_dsa_pairs_through_openssl(dsa_via_openssl, tmp_path):
    from castellan.common.objects import private_key as castellan_private_key
    from oslo_config import cfg
    from oslo_context import context as oslo_context

    from imgsign.keymanager.embedded import EmbeddedKeyManager

    conf = cfg.ConfigOpts()
    conf(args=[], project="imgsign-test", default_config_files=[])
    manager = EmbeddedKeyManager(conf)
    conf.set_override("path", str(tmp_path / "ks.sqlite3"), group="imgsign_embedded")
    context = oslo_context.RequestContext(project_id="demo")
    private_id, public_id = manager.create_key_pair(context, "DSA", 2048)
    private = manager.get(context, private_id)
    assert isinstance(private, castellan_private_key.PrivateKey)
    key = loading.load_private_key(private.get_encoded())
    assert isinstance(key, openssl_backend.OpenSSLPrivateKey)
    assert manager.get(context, public_id).get_encoded() == key.public_key().spki_der()


# --- the command line, and interop with openssl and cursive ---------------------------------------------------

def test_command_line_round_trip_with_interop(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    made = run_cli("keygen", "--no-encrypt", "--key-type", "DSA", "--bits", "2048", "--out-key", tmp_path / "dsa.key",
                   "--out-cert", tmp_path / "dsa.pem", "--ca-cert", pki("intermediate-ca.pem"),
                   "--ca-key", pki("intermediate-ca.key"), env=OPENSSL_DSA)
    assert made.code == 0, made
    signed = run_cli("sign", image, "--key", tmp_path / "dsa.key", "--cert", tmp_path / "dsa.pem",
                     "--cert-uuid", CERT_UUID, "--hash-method", "SHA-256", env=OPENSSL_DSA)
    assert signed.code == 0 and signed.stderr == "", signed
    props = tmp_path / "props.json"
    props.write_text(signed.stdout)
    chain = ["--trusted-file", pki("root-ca.pem"), "--intermediate", pki("intermediate-ca.pem")]
    ok = run_cli("verify", image, "--properties", props, "--cert", tmp_path / "dsa.pem", *chain, env=OPENSSL_DSA)
    assert ok.code == 0 and ok.stderr == "", ok
    untrusted = run_cli("verify", image, "--properties", props, "--cert", tmp_path / "dsa.pem",
                        "--trusted-file", pki("untrusted-root-ca.pem"), env=OPENSSL_DSA)
    assert untrusted.code == errors.UntrustedCertificate.exit_code, untrusted
    # openssl verifies imgsign's signature ...
    signature = tmp_path / "img.sig"
    signature.write_bytes(base64.b64decode(signed.json()["img_signature"]))
    public = tmp_path / "pub.pem"
    subprocess.run([openssl(), "x509", "-in", tmp_path / "dsa.pem", "-pubkey", "-noout", "-out", public], check=True)
    checked = subprocess.run([openssl(), "dgst", "-sha256", "-verify", public, "-signature", signature, image],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and "Verified OK" in checked.stdout, checked
    # ... and imgsign verifies openssl's, the documented manual procedure.
    subprocess.run([openssl(), "dgst", "-sha384", "-sign", tmp_path / "dsa.key", "-out", signature, image],
                   check=True)
    props.write_text(json.dumps({"img_signature": base64.b64encode(signature.read_bytes()).decode(),
                                 "img_signature_hash_method": "SHA-384", "img_signature_key_type": "DSA",
                                 "img_signature_certificate_uuid": CERT_UUID}))
    ok = run_cli("verify", image, "--properties", props, "--cert", tmp_path / "dsa.pem", env=OPENSSL_DSA)
    assert ok.code == 0 and ok.stderr == "", ok
    image.write_bytes(image.read_bytes()[:-1] + b"\0")
    bad = run_cli("verify", image, "--properties", props, "--cert", tmp_path / "dsa.pem", env=OPENSSL_DSA)
    assert bad.code == errors.InvalidSignature.exit_code, bad


def test_cursive_verifies_what_the_openssl_path_signs(tmp_path):
    """cursive (Glance's and Nova's verifier, on cryptography's DSA) accepts signatures made through OpenSSL."""
    from tests.test_interop_cursive import HOST

    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1024 * 1024 + 3))
    from castellan import key_manager
    from castellan.common.objects import x_509
    from oslo_config import cfg
    from oslo_context import context as oslo_context

    config = tmp_path / "nova.conf"
    config.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {tmp_path / 'ks.sqlite3'}\n")
    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[str(config)])
    der = load_certificate(cert_of("DSA").read_bytes()).public_bytes(serialization.Encoding.DER)
    uuid = key_manager.API(conf).store(oslo_context.RequestContext(project_id="demo"), x_509.X509(der))
    jobs = []
    for hash_name in HASHES:
        signed = run_cli("sign", image, "--key", key_of("DSA"), "--cert", cert_of("DSA"), "--cert-uuid", uuid,
                         "--hash-method", hash_name, env=OPENSSL_DSA)
        assert signed.code == 0 and signed.stderr == "", signed
        jobs.append({"image": str(image), "properties": signed.json(), "project_id": "demo"})
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(HOST), str(config), str(jobs_file)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["ok"] * len(HASHES)


def test_openssl_path_needs_openssl(dsa_via_openssl, monkeypatch):
    monkeypatch.setenv("IMGSIGN_OPENSSL", str(Path("/nonexistent/openssl")))
    with pytest.raises(errors.BackendUnavailable, match="openssl command line for keys cryptography cannot load"):
        loading.load_private_key(key_of("DSA").read_bytes())
    cert = load_certificate(cert_of("DSA").read_bytes())
    public = certificate_public_key(cert)
    with pytest.raises(errors.BackendUnavailable, match="for DSA keys"):
        public.verify_digest(b"\x30\x06\x02\x01\x01\x02\x01\x01", digest(HashMethod.SHA256), HashMethod.SHA256)
    assert isinstance(x509.load_pem_x509_certificate(cert_of("DSA").read_bytes()), x509.Certificate)
