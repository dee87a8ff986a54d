"""Make a signing key and its certificate (self-signed or issued by a CA).

Returns PEM bytes; writing them to disk is the caller's job.  Binary-curve
keys and their certificates are made by the system OpenSSL, because
``cryptography`` cannot represent them.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from collections.abc import Callable
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from imgsign.algorithms import KeyType
from imgsign.errors import CertificateError, CertificateKeyMismatch, InputError, PrivateKeyError, UnsupportedAlgorithm
from imgsign.keys import PublicKey

_T = TypeVar("_T")

DEFAULT_DAYS = 365
DEFAULT_BITS = 3072
#: RSA modulus sizes imgsign generates (OpenSSL's own maximum is 16384 bits).
RSA_BITS = range(1024, 16384 + 1)
#: DSA sizes ``cryptography`` generates.
DSA_BITS = (1024, 2048, 3072, 4096)
DEFAULT_SUBJECT = "CN=imgsign image signer"


@dataclasses.dataclass(frozen=True)
class Issuer:
    """A CA that issues the new certificate: its PEM certificate and PEM key."""

    cert_pem: bytes
    key_pem: bytes
    passphrase: bytes | None = None


@dataclasses.dataclass(frozen=True)
class SigningIdentity:
    """A freshly made private key (PEM, encrypted if a passphrase was given) and certificate (PEM)."""

    key_pem: bytes
    cert_pem: bytes

    def __repr__(self) -> str:  # never show key material
        return f"SigningIdentity(key_pem=<redacted>, cert_pem=<{len(self.cert_pem)} bytes>)"


def parse_subject(subject: str) -> x509.Name:
    """An RFC 4514 string such as ``CN=signer,O=Example`` as an X.509 name."""
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError as exc:
        detail = str(exc) or "not an RFC 4514 name such as CN=signer,O=Example"
        raise InputError(f"invalid --subject {subject!r}: {detail}") from None
    if not list(name):
        raise InputError("the --subject is empty")
    return name


def check_bits(key_type: KeyType, bits: int | None) -> None:
    """Refuse a key size ``key_type`` cannot have (``None``: the default size, or a curve's)."""
    if bits is None:
        return
    if key_type is KeyType.RSA_PSS:
        if bits not in RSA_BITS:
            raise InputError(f"RSA --bits must be between {RSA_BITS.start} and {RSA_BITS.stop - 1}, not {bits}")
    elif key_type is KeyType.DSA:
        if bits not in DSA_BITS:
            raise InputError(f"DSA --bits must be {', '.join(map(str, DSA_BITS[:-1]))} or {DSA_BITS[-1]}, not {bits}")
    else:
        raise InputError(f"--bits does not apply to {key_type.value}: the curve sets the key size")


def generate(
    key_type: KeyType,
    *,
    subject: str = DEFAULT_SUBJECT,
    days: int = DEFAULT_DAYS,
    bits: int | None = None,
    issuer: Issuer | None = None,
    passphrase: bytes | None = None,
) -> SigningIdentity:
    """Generate a key of ``key_type`` and a code-signing certificate for it.

    ``bits`` is the RSA or DSA key size (default :data:`DEFAULT_BITS`); curve key types take none.
    """
    if days < 1:
        raise InputError("--days must be at least 1")
    check_bits(key_type, bits)
    name = parse_subject(subject)
    if key_type.is_binary_curve:
        from imgsign._internal import openssl, openssl_keygen

        for data, error, what in ((passphrase, InputError, "the passphrase"),
                                  (issuer and issuer.cert_pem, CertificateError, "the CA certificate"),
                                  (issuer and issuer.key_pem, PrivateKeyError, "the CA private key"),
                                  (issuer and issuer.passphrase, PrivateKeyError, "the CA passphrase")):
            if data:
                openssl.check_pipe_input(data, error, what)
        ca = None if issuer is None else openssl_keygen.CA(issuer.cert_pem, issuer.key_pem, issuer.passphrase)
        return SigningIdentity(*openssl_keygen.generate(key_type, name, days, ca, passphrase))
    key = _interruptible(lambda: _new_key(key_type, DEFAULT_BITS if bits is None else bits))
    cert = _certificate(key.public_key(), name, days, issuer, key)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return SigningIdentity(key_pem, cert.public_bytes(serialization.Encoding.PEM))


def certify(public_key: PublicKey, *, issuer: Issuer, subject: str = DEFAULT_SUBJECT,
            days: int = DEFAULT_DAYS) -> bytes:
    """A code-signing certificate (PEM) issued by ``issuer`` for a key that lives elsewhere (e.g. in a
    signing service): only its public key is needed."""
    if days < 1:
        raise InputError("--days must be at least 1")
    name = parse_subject(subject)
    pyca = serialization.load_der_public_key(public_key.spki_der())
    if not isinstance(pyca, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise UnsupportedAlgorithm(f"cannot certify a {public_key.describe()} key")
    return _certificate(pyca, name, days, issuer, None).public_bytes(serialization.Encoding.PEM)


def check_issuer(issuer: Issuer) -> None:
    """Raise unless ``issuer`` is a usable CA (certificate, key that belongs to it)."""
    _load_issuer(issuer)


def _certificate(public: rsa.RSAPublicKey | dsa.DSAPublicKey | ec.EllipticCurvePublicKey, name: x509.Name,
                 days: int, issuer: Issuer | None,
                 own_key: CertificateIssuerPrivateKeyTypes | None) -> x509.Certificate:
    """The leaf certificate of ``public``: issued by ``issuer``, else self-signed with ``own_key``."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    issuer_name, issuer_ski = name, None
    if issuer is not None:
        ca_cert, issuer_key = _load_issuer(issuer)
        issuer_name = ca_cert.subject
        issuer_ski = _ski_of(ca_cert)
    elif own_key is not None:
        issuer_key = own_key
    else:
        raise InputError("a certificate for this key needs an issuing CA (--ca-cert and --ca-key)")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if issuer_ski is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)


def _interruptible(make: Callable[[], _T]) -> _T:
    """Run ``make`` (a key generation that may take minutes) in a daemon thread.

    Python handles Ctrl-C only in the main thread, between bytecodes; ``cryptography``
    releases the GIL while it searches for primes, so the main thread waiting here stays
    responsive and an interrupt ends the process instead of waiting for the key.
    """
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(make())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="imgsign-keygen", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if failure:
        raise failure[0]
    return outcome[0]


def _new_key(key_type: KeyType, bits: int) -> rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type is KeyType.RSA_PSS:
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if key_type is KeyType.DSA:
        return dsa.generate_private_key(key_size=bits)
    curve = {KeyType.ECC_SECP384R1: ec.SECP384R1, KeyType.ECC_SECP521R1: ec.SECP521R1}[key_type]
    return ec.generate_private_key(curve())


def _load_issuer(issuer: Issuer) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    from imgsign.certificates import certificate_spki_der, describe, load_certificate
    from imgsign.keys.inprocess import CryptographyPrivateKey
    from imgsign.keys.loading import load_private_key

    ca_cert = load_certificate(issuer.cert_pem)
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(f"--ca-cert {describe(ca_cert)} is not a CA (basicConstraints CA:TRUE missing)")
    ca_key = load_private_key(issuer.key_pem, issuer.passphrase)
    if ca_key.public_key().spki_der() != certificate_spki_der(ca_cert):
        raise CertificateKeyMismatch(f"--ca-key does not belong to --ca-cert {describe(ca_cert)}")
    if not isinstance(ca_key, CryptographyPrivateKey):
        raise UnsupportedAlgorithm("a binary-curve CA key can only issue binary-curve certificates")
    return ca_cert, ca_key.pyca_key


def _ski_of(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        try:
            key = cert.public_key()
            if not isinstance(key, (rsa.RSAPublicKey, dsa.DSAPublicKey, ec.EllipticCurvePublicKey)):
                raise TypeError(type(key).__name__)
            return x509.SubjectKeyIdentifier.from_public_key(key)
        except Exception:  # noqa: BLE001 - any key cryptography cannot load
            raise PrivateKeyError("cannot compute the CA's key identifier") from None
