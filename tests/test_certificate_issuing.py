"""Certificates and certificate requests signed through the ``PrivateKey`` interface alone (issue 12):
what a key in an HSM or a KMS can do, checked with openssl, cryptography, imgsign's chain validation
and the CLI (``keygen --csr``, ``cert store --key``)."""

from __future__ import annotations

import re
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from imgsign import errors, keygen
from imgsign.algorithms import HashMethod, KeyType
from imgsign.chain import TrustAnchors, validate_chain
from imgsign.keys import PrivateKey, PublicKey
from imgsign.keys.loading import load_private_key
from tests.conftest import CERT_UUID, openssl, pki, run_cli

SUBJECT = x509.Name.from_rfc4514_string("CN=hsm signer,O=Example")


class InterfaceOnlyKey(PrivateKey):
    """A key used through the abstract methods of ``PrivateKey`` and nothing else, like a token's key:
    its private half cannot be exported."""

    def __init__(self, inner: PrivateKey) -> None:
        self._inner = inner

    @property
    def key_type(self) -> KeyType | None:
        return self._inner.key_type

    @property
    def key_size(self) -> int:
        return self._inner.key_size

    def public_key(self) -> PublicKey:
        return self._inner.public_key()

    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        return self._inner.sign_digest(digest, hash_method)

    def export_pkcs8_der(self) -> bytes:
        raise errors.MechanismUnsupported("the key never leaves the token")


class Pkcs1InterfaceKey(InterfaceOnlyKey):
    """The same, for a token that also signs RSASSA-PKCS1-v1_5 (the optional method)."""

    def sign_digest_pkcs1v15(self, digest: bytes, hash_method: HashMethod) -> bytes:
        return self._inner.sign_digest_pkcs1v15(digest, hash_method)


KEYS = [  # (key type, bits, certificate hash)
    (KeyType.RSA_PSS, 2048, HashMethod.SHA256),
    (KeyType.RSA_PSS, 2048, HashMethod.SHA384),
    (KeyType.RSA_PSS, 2048, HashMethod.SHA512),
    (KeyType.RSA_PSS, 3072, HashMethod.SHA256),
    (KeyType.ECC_SECP384R1, None, HashMethod.SHA384),
    (KeyType.ECC_SECP521R1, None, HashMethod.SHA512),
    (KeyType.DSA, 2048, HashMethod.SHA256),
]
KEY_IDS = [f"{t.value}-{b or 'curve'}-{h.value}" for t, b, h in KEYS]


def write_pem(path, obj) -> str:
    path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    return str(path)


def openssl_run(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([openssl(), *map(str, args)], capture_output=True, text=True, check=False)


def check_signature_algorithm(cert_or_csr_pem: str, kind: str, key_type: KeyType, hash_method: HashMethod,
                              bits: int | None) -> None:
    """The signatureAlgorithm is exactly the one for the key type, read back by openssl."""
    text = openssl_run(kind, "-in", cert_or_csr_pem, "-noout", "-text").stdout
    name = hash_method.openssl_name
    if key_type is KeyType.RSA_PSS:
        salt = (bits + 6) // 8 - hash_method.digest_size - 2  # the maximum salt sign_digest uses
        assert "Signature Algorithm: rsassaPss" in text, text
        assert f"Hash Algorithm: {name}" in text and f"Mask Algorithm: mgf1 with {name}" in text, text
        assert re.search(rf"Salt Length: 0x0*{salt:X}\n", text), text
    elif key_type is KeyType.DSA:
        assert f"Signature Algorithm: dsa_with_SHA{name[3:]}" in text, text
    else:
        assert f"Signature Algorithm: ecdsa-with-SHA{name[3:]}" in text, text


def sign_and_verify_image(tmp_path, key: PrivateKey, cert_path: str) -> None:
    """An image signed with the key verifies with ``imgsign verify --cert``."""
    key_file = tmp_path / "signing.key"
    key_file.write_bytes(serialization.load_der_private_key(key.export_pkcs8_der(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    image = tmp_path / "image.raw"
    image.write_bytes(b"imgsign" * 50_000)
    signed = run_cli("sign", image, "--key", key_file, "--cert-uuid", CERT_UUID)
    assert signed.code == 0, signed
    props = tmp_path / "props.json"
    props.write_text(signed.stdout)
    verified = run_cli("verify", image, "--properties", props, "--cert", cert_path)
    assert verified.code == 0, verified


@pytest.mark.parametrize(("key_type", "bits", "hash_method"), KEYS, ids=KEY_IDS)
def test_self_signed_certificate_through_the_interface_only(tmp_path, key_type, bits, hash_method):
    key, _ = keygen.new_key(key_type, bits)
    token = InterfaceOnlyKey(key)
    cert = keygen.issue_certificate(SUBJECT, token.public_key(), token, days=30, hash_method=hash_method)
    path = write_pem(tmp_path / "cert.pem", cert)

    check_signature_algorithm(path, "x509", key_type, hash_method, bits)
    checked = openssl_run("verify", "-check_ss_sig", "-x509_strict", "-CAfile", path, path)
    assert checked.returncode == 0 and f"{path}: OK" in checked.stdout, checked
    loaded = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    loaded.verify_directly_issued_by(loaded)
    assert loaded.subject == loaded.issuer == SUBJECT
    assert loaded.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == key.public_key().spki_der()
    assert loaded.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert loaded.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert list(loaded.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) \
        == [ExtendedKeyUsageOID.CODE_SIGNING]
    assert loaded.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert loaded.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value \
        == x509.SubjectKeyIdentifier.from_public_key(loaded.public_key())
    assert validate_chain(loaded, TrustAnchors([loaded])) == [loaded]
    sign_and_verify_image(tmp_path, key, path)


def _ca(stem: str, wrapper: type[InterfaceOnlyKey]) -> keygen.Issuer:
    certificate = x509.load_pem_x509_certificate(pki(stem + ".pem").read_bytes())
    return keygen.Issuer(certificate, wrapper(load_private_key(pki(stem + ".key").read_bytes())))


@pytest.mark.parametrize(("key_type", "bits", "hash_method"), KEYS, ids=KEY_IDS)
def test_ca_in_a_token_issues_certificates(tmp_path, key_type, bits, hash_method):
    """A CA key used through the interface only issues a certificate for a key of each type: an
    ECDSA CA's chain validates; an RSA CA signs PKCS#1 v1.5 when the token can (the chain then
    validates, and cursive could check it), else RSASSA-PSS with the maximum salt, which openssl
    accepts and imgsign's chain validation refuses with a clear reason."""
    key, _ = keygen.new_key(key_type, bits)
    ecdsa_ca = _ca("ecdsa-intermediate-ca", InterfaceOnlyKey)
    cert = keygen.issue_certificate(SUBJECT, key.public_key(), ecdsa_ca, hash_method=hash_method)
    path = write_pem(tmp_path / "leaf.pem", cert)
    bundle = tmp_path / "ecdsa-cas.pem"
    bundle.write_bytes(pki("ecdsa-root-ca.pem").read_bytes() + pki("ecdsa-intermediate-ca.pem").read_bytes())
    checked = openssl_run("verify", "-x509_strict", "-CAfile", bundle, path)
    assert checked.returncode == 0, checked
    assert cert.signature_algorithm_oid == {
        HashMethod.SHA256: SignatureAlgorithmOID.ECDSA_WITH_SHA256, HashMethod.SHA384: SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        HashMethod.SHA512: SignatureAlgorithmOID.ECDSA_WITH_SHA512}[hash_method]
    authority = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert authority == ecdsa_ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    ecdsa_anchors = TrustAnchors([x509.load_pem_x509_certificate(pki("ecdsa-root-ca.pem").read_bytes())],
                                 [ecdsa_ca.certificate])
    assert len(validate_chain(cert, ecdsa_anchors)) == 3
    sign_and_verify_image(tmp_path, key, path)

    rsa_anchors = TrustAnchors([x509.load_pem_x509_certificate(pki("root-ca.pem").read_bytes())],
                               [x509.load_pem_x509_certificate(pki("intermediate-ca.pem").read_bytes())])
    rsa_bundle = tmp_path / "rsa-cas.pem"
    rsa_bundle.write_bytes(pki("root-ca.pem").read_bytes() + pki("intermediate-ca.pem").read_bytes())
    pkcs1 = keygen.issue_certificate(SUBJECT, key.public_key(), _ca("intermediate-ca", Pkcs1InterfaceKey),
                                     hash_method=hash_method)
    assert pkcs1.signature_algorithm_oid.dotted_string.startswith("1.2.840.113549.1.1.")  # shaNNNWithRSAEncryption
    assert isinstance(pkcs1.signature_algorithm_parameters, padding.PKCS1v15)
    assert len(validate_chain(pkcs1, rsa_anchors)) == 3
    assert openssl_run("verify", "-CAfile", rsa_bundle, write_pem(tmp_path / "pkcs1.pem", pkcs1)).returncode == 0

    pss = keygen.issue_certificate(SUBJECT, key.public_key(), _ca("intermediate-ca", InterfaceOnlyKey),
                                   hash_method=hash_method)
    pss_path = write_pem(tmp_path / "pss.pem", pss)
    assert pss.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
    ca_bits = rsa_anchors.intermediates[0].public_key().key_size
    check_signature_algorithm(pss_path, "x509", KeyType.RSA_PSS, hash_method, ca_bits)
    assert openssl_run("verify", "-x509_strict", "-CAfile", rsa_bundle, pss_path).returncode == 0
    with pytest.raises(errors.UntrustedCertificate, match="RSASSA-PSS with another salt such as the maximum"):
        validate_chain(pss, rsa_anchors)


def test_certificate_for_a_binary_curve_key_from_a_ca_in_a_token(tmp_path):
    """The subject key can be one cryptography cannot load: only its SubjectPublicKeyInfo is needed."""
    key, _ = keygen.new_key(KeyType.ECC_SECT409K1)
    cert = keygen.issue_certificate(SUBJECT, key.public_key().spki_der(), _ca("ecdsa-intermediate-ca", InterfaceOnlyKey))
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(pki("ecdsa-root-ca.pem").read_bytes() + pki("ecdsa-intermediate-ca.pem").read_bytes())
    checked = openssl_run("verify", "-CAfile", bundle, write_pem(tmp_path / "leaf.pem", cert))
    assert checked.returncode == 0, checked
    text = openssl_run("x509", "-in", tmp_path / "leaf.pem", "-noout", "-text").stdout
    assert "ASN1 OID: sect409k1" in text


@pytest.mark.parametrize(("key_type", "bits", "hash_method"), KEYS, ids=KEY_IDS)
def test_certificate_request_through_the_interface_only(tmp_path, key_type, bits, hash_method):
    key, _ = keygen.new_key(key_type, bits)
    request = keygen.certificate_request(SUBJECT, InterfaceOnlyKey(key), hash_method=hash_method)
    path = write_pem(tmp_path / "req.csr", request)
    checked = openssl_run("req", "-verify", "-noout", "-in", path)
    assert checked.returncode == 0 and "verify OK" in checked.stdout + checked.stderr, checked
    check_signature_algorithm(path, "req", key_type, hash_method, bits)
    assert request.is_signature_valid and request.subject == SUBJECT
    assert request.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == key.public_key().spki_der()
    assert request.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert list(request.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) \
        == [ExtendedKeyUsageOID.CODE_SIGNING]


class OtherKeySigner(InterfaceOnlyKey):
    """A broken token: it signs with another key than the one it reports."""

    def __init__(self, inner: PrivateKey, other: PrivateKey) -> None:
        super().__init__(inner)
        self._other = other

    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        return self._other.sign_digest(digest, hash_method)


class HashLengthSaltSigner(InterfaceOnlyKey):
    """A service that signs RSASSA-PSS with a salt as long as the hash, not the maximum (Vault's
    ``salt_length=auto`` in a FIPS build)."""

    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        pyca = serialization.load_der_private_key(self._inner.export_pkcs8_der(), None)
        pss = padding.PSS(padding.MGF1(hash_method.algorithm), padding.PSS.DIGEST_LENGTH)
        return pyca.sign(digest, pss, utils.Prehashed(hash_method.algorithm))  # type: ignore[union-attr,call-arg]


def test_a_signature_that_does_not_verify_is_refused():
    key, _ = keygen.new_key(KeyType.ECC_SECP384R1)
    other, _ = keygen.new_key(KeyType.ECC_SECP384R1)
    broken = OtherKeySigner(key, other)
    with pytest.raises(errors.SignerRefused, match="does not verify with its public key"):
        keygen.issue_certificate(SUBJECT, broken.public_key(), broken)
    with pytest.raises(errors.SignerRefused):
        keygen.certificate_request(SUBJECT, broken)
    rsa_key, _ = keygen.new_key(KeyType.RSA_PSS, 2048)
    with pytest.raises(errors.SignerRefused, match="maximum salt, 222 bytes"):
        keygen.certificate_request(SUBJECT, HashLengthSaltSigner(rsa_key))


def test_issuing_refuses_a_key_that_is_not_the_certificates():
    key, _ = keygen.new_key(KeyType.ECC_SECP384R1)
    other, _ = keygen.new_key(KeyType.ECC_SECP384R1)
    with pytest.raises(errors.CertificateKeyMismatch, match="self-signed"):
        keygen.issue_certificate(SUBJECT, other.public_key(), InterfaceOnlyKey(key))
    wrong_ca = keygen.Issuer(_ca("ecdsa-intermediate-ca", InterfaceOnlyKey).certificate, InterfaceOnlyKey(key))
    with pytest.raises(errors.CertificateKeyMismatch, match="--ca-key does not belong"):
        keygen.issue_certificate(SUBJECT, other.public_key(), wrong_ca)


# --- the command line ------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    """An empty embedded store and no config file."""
    return {"IMGSIGN_KEYSTORE": str(tmp_path / "store" / "keystore.sqlite3"),
            "IMGSIGN_CONFIG": "", "XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}


def ca_signs(tmp_path, csr, name="issued.pem"):
    """What an enterprise CA does with the request: ``openssl x509 -req``, copying the requested extensions."""
    out = tmp_path / name
    result = openssl_run("x509", "-req", "-in", csr, "-CA", pki("intermediate-ca.pem"), "-CAkey",
                         pki("intermediate-ca.key"), "-copy_extensions", "copy", "-days", "30", "-sha256",
                         "-out", out)
    assert result.returncode == 0, result
    return out


@pytest.mark.parametrize("key_type", ["RSA-PSS", "ECC_SECP521R1", "ECC_SECT409K1"])
def test_keygen_csr_then_store_the_cas_certificate(tmp_path, env, key_type):
    key, csr = tmp_path / "signer.key", tmp_path / "signer.csr"
    made = run_cli("keygen", "--no-encrypt", "--key-type", key_type, "--out-key", key, "--csr", csr,
                   "--subject", "CN=release signer,O=Example", *(["--bits", 2048] if key_type == "RSA-PSS" else []))
    assert made.code == 0, made
    assert "imgsign cert store" in made.stderr and (key.stat().st_mode & 0o777) == 0o600
    assert openssl_run("req", "-verify", "-noout", "-in", csr).returncode == 0
    text = openssl_run("req", "-in", csr, "-noout", "-text").stdout
    assert "Code Signing" in text and "Digital Signature" in text and "release signer" in text
    issued = ca_signs(tmp_path, csr)
    stored = run_cli("cert", "store", issued, "--key", key, env=env)
    assert stored.code == 0, stored
    cert_id = stored.stdout.strip()

    # the CA's reply with its chain: the certificate for the key is the one stored (the same one)
    reply = tmp_path / "reply.pem"
    reply.write_bytes(pki("intermediate-ca.pem").read_bytes() + issued.read_bytes())
    again = run_cli("cert", "store", reply, "--key", key, env=env)
    assert again.code == 0 and again.stdout.strip() == cert_id, again

    image = tmp_path / "image.raw"
    image.write_bytes(b"x" * 100_000)
    signed = run_cli("sign", image, "--key", key, "--cert-uuid", cert_id, env=env)
    assert signed.code == 0, signed
    props = tmp_path / "props.json"
    props.write_text(signed.stdout)
    verified = run_cli("verify", image, "--properties", props, "--trusted-file", pki("root-ca.pem"),
                       "--intermediate", pki("intermediate-ca.pem"), env=env)
    assert verified.code == 0, verified


def test_cert_store_refuses_a_certificate_for_another_key(tmp_path, env):
    key, csr = tmp_path / "signer.key", tmp_path / "signer.csr"
    assert run_cli("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", key, "--csr", csr).code == 0
    other_key, other_csr = tmp_path / "other.key", tmp_path / "other.csr"
    assert run_cli("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", other_key, "--csr", other_csr,
                   "--subject", "CN=someone else").code == 0
    wrong = ca_signs(tmp_path, other_csr, "wrong.pem")
    refused = run_cli("cert", "store", wrong, "--key", key, env=env)
    assert refused.code == errors.CertificateKeyMismatch.exit_code, refused
    assert f"is not for the key {key}" in refused.stderr and "CN=someone else" in refused.stderr
    assert run_cli("cert", "list", "--json", env=env).json() == []


def test_cert_store_refuses_a_certificate_that_may_not_sign(tmp_path, env):
    """A CA that dropped the requested extensions for a non-signing profile: refused when the key is given."""
    key, csr = tmp_path / "signer.key", tmp_path / "signer.csr"
    assert run_cli("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", key, "--csr", csr).code == 0
    ext = tmp_path / "tls.cnf"
    ext.write_text("[v3]\nkeyUsage = critical,keyEncipherment\nextendedKeyUsage = serverAuth\n")
    issued = tmp_path / "tls.pem"
    result = openssl_run("x509", "-req", "-in", csr, "-CA", pki("intermediate-ca.pem"), "-CAkey",
                         pki("intermediate-ca.key"), "-extfile", ext, "-extensions", "v3", "-out", issued)
    assert result.returncode == 0, result
    refused = run_cli("cert", "store", issued, "--key", key, env=env)
    assert refused.code == errors.CertificateError.exit_code and "digitalSignature" in refused.stderr, refused


@pytest.mark.parametrize(("extra", "message"), [
    (("--csr", "R", "--out-cert", "C"), "give --out-cert, or --csr"),
    ((), "give --out-cert, or --csr"),
    (("--csr", "R", "--ca-cert", "CA", "--ca-key", "CAKEY"), "--ca-cert does not go with --csr"),
    (("--csr", "R", "--days", "30"), "--days does not go with --csr"),
], ids=["csr-and-cert", "neither", "csr-with-ca", "csr-with-days"])
def test_keygen_csr_option_combinations(tmp_path, extra, message):
    names = {"R": tmp_path / "r.csr", "C": tmp_path / "c.pem", "CA": pki("intermediate-ca.pem"),
             "CAKEY": pki("intermediate-ca.key")}
    result = run_cli("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "k.pem",
                     *(names.get(a, a) for a in extra))
    assert result.code == 2 and "Usage:" in result.stderr and message in result.stderr, result
    assert not (tmp_path / "k.pem").exists() and not (tmp_path / "r.csr").exists()


def test_keygen_ca_key_is_loaded_like_every_key(tmp_path):
    """--ca-key goes through the one key loader: an encrypted CA key with its passphrase file works,
    a wrong passphrase is a key error, and nothing is written."""
    ca_key = tmp_path / "ca.key"
    pw = tmp_path / "pw"
    pw.write_text("ca secret\n")
    plain = serialization.load_pem_private_key(pki("ecdsa-intermediate-ca.key").read_bytes(), None)
    ca_key.write_bytes(plain.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"ca secret")))
    args = ("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "k.pem", "--out-cert",
            tmp_path / "c.pem", "--ca-cert", pki("ecdsa-intermediate-ca.pem"), "--ca-key", ca_key)
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    refused = run_cli(*args, "--ca-passphrase-file", bad)
    assert refused.code == errors.PrivateKeyError.exit_code and "passphrase" in refused.stderr, refused
    assert not (tmp_path / "k.pem").exists()
    made = run_cli(*args, "--ca-passphrase-file", pw)
    assert made.code == 0, made
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    assert cert.signature_hash_algorithm.name == hashes.SHA256.name
    assert openssl_run("verify", "-CAfile", pki("ecdsa-root-ca.pem"), "-untrusted", pki("ecdsa-intermediate-ca.pem"),
                       tmp_path / "c.pem").returncode == 0


def test_cert_request_and_issue_for_an_existing_key(tmp_path, env):
    """``cert request`` and ``cert issue`` make a request or a certificate for a key that already exists
    (loaded like every key: after the merge of the token backends, a key reference too)."""
    key, pw = tmp_path / "existing.key", tmp_path / "pw"
    pw.write_text("secret\n")
    assert run_cli("keygen", "--key-type", "RSA-PSS", "--bits", 2048, "--out-key", key, "--out-cert",
                   tmp_path / "first.pem", "--passphrase-file", pw).code == 0
    csr = tmp_path / "existing.csr"
    requested = run_cli("cert", "request", "--key", key, "--passphrase-file", pw, "--out", csr,
                        "--subject", "CN=existing key")
    assert requested.code == 0 and "RSA 2048-bit" in requested.stderr, requested
    assert openssl_run("req", "-verify", "-noout", "-in", csr).returncode == 0
    issued = ca_signs(tmp_path, csr)
    assert run_cli("cert", "store", issued, "--key", key, "--passphrase-file", pw, env=env).code == 0

    image = tmp_path / "image.raw"
    image.write_bytes(b"y" * 100_000)
    for extra, trust in (((), ()), (("--ca-cert", pki("intermediate-ca.pem"), "--ca-key", pki("intermediate-ca.key"),
                                     "--days", 7), ("--trusted-file", pki("root-ca.pem"), "--intermediate",
                                                    pki("intermediate-ca.pem")))):
        cert = tmp_path / f"issued-{len(extra)}.pem"
        made = run_cli("cert", "issue", "--key", key, "--passphrase-file", pw, "--out", cert, *extra)
        assert made.code == 0, made
        assert ("self-signed" in made.stderr) == (not extra)
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        assert isinstance(loaded.signature_algorithm_parameters, padding.PKCS1v15)  # a file key can: cursive-compatible
        signed = run_cli("sign", image, "--key", key, "--passphrase-file", pw, "--cert", cert, "--cert-uuid", CERT_UUID)
        assert signed.code == 0, signed
        props = tmp_path / "props.json"
        props.write_text(signed.stdout)
        verified = run_cli("verify", image, "--properties", props, "--cert", cert, *trust, env=env)
        assert verified.code == 0, verified


def test_cert_issue_and_request_refuse_keys_and_options_they_cannot_use(tmp_path):
    p256 = run_cli("cert", "issue", "--key", pki("leaf-ecc-secp256r1.key"), "--out", tmp_path / "c.pem")
    assert p256.code == errors.UnsupportedAlgorithm.exit_code and "secp256r1 keys cannot sign" in p256.stderr, p256
    request = run_cli("cert", "request", "--key", pki("leaf-ecc-secp256r1.key"), "--out", tmp_path / "r.csr")
    assert request.code == errors.UnsupportedAlgorithm.exit_code, request
    for args, message in (
        (("--ca-cert", pki("intermediate-ca.pem")), "--ca-cert and --ca-key go together"),
        (("--ca-passphrase-file", tmp_path / "pw"), "--ca-passphrase-file needs --ca-key"),
        (("--subject", "no equals sign"), "--subject"),
    ):
        result = run_cli("cert", "issue", "--key", pki("leaf-ecc-secp384r1.key"), "--out", tmp_path / "c.pem", *args)
        assert result.code == 2 and message in result.stderr, result
    not_ca = run_cli("cert", "issue", "--key", pki("leaf-ecc-secp384r1.key"), "--out", tmp_path / "c.pem",
                     "--ca-cert", pki("not-a-ca.pem"), "--ca-key", pki("not-a-ca.key"))
    assert not_ca.code == errors.CertificateError.exit_code and "not a CA" in not_ca.stderr, not_ca
    wrong_key = run_cli("cert", "issue", "--key", pki("leaf-ecc-secp384r1.key"), "--out", tmp_path / "c.pem",
                        "--ca-cert", pki("intermediate-ca.pem"), "--ca-key", pki("ecdsa-intermediate-ca.key"))
    assert wrong_key.code == errors.CertificateKeyMismatch.exit_code and "does not belong" in wrong_key.stderr
    assert not (tmp_path / "c.pem").exists() and not (tmp_path / "r.csr").exists()
