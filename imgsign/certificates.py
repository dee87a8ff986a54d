"""The signing certificate: loading it, its public key, and its own checks.

Chain validation against trusted certificates lives in its own module; this
one answers "may this certificate's key sign images right now?".
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable

from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from imgsign._internal import known_warnings, pyca_dsa
from imgsign.errors import (
    CertificateError,
    CertificateExpired,
    CertificateKeyMismatch,
    CertificateNotYetValid,
    UnsupportedAlgorithm,
)
from imgsign.keys import PublicKey
from imgsign.keys.loading import is_pem, public_key_from_pyca, public_key_from_spki
from imgsign.policy import DEFAULT_POLICY, Policy


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one X.509 certificate, PEM (the first in the text) or DER; raise :class:`CertificateError` if
    unreadable or if RFC 5280 forbids it (see :func:`check_names`)."""
    pem = is_pem(data)
    loader = x509.load_pem_x509_certificate if pem else x509.load_der_x509_certificate
    try:
        return check_names(_parse(lambda: [loader(data)])[0])
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion (not v1-v3) is no ValueError
        first = str(exc).splitlines()[0][:160] if str(exc) else "parse error"
        raise CertificateError(f"not a readable {'PEM' if pem else 'DER'} X.509 certificate ({first})") from None


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle, or the one DER certificate; each checked as :func:`load_certificate`."""
    try:
        if b"-----BEGIN" in data:
            found = _parse(lambda: x509.load_pem_x509_certificates(data))
        else:
            found = _parse(lambda: [x509.load_der_x509_certificate(data)])
        for cert in found:
            check_names(cert)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CertificateError(f"not a readable certificate or PEM bundle ({str(exc)[:120]})") from None
    return found


_SERIAL_FORBIDDEN = "its serial number is zero or negative, which RFC 5280 (4.1.2.2) forbids"


def check_serials(parsed: x509.Certificate | x509.CertificateRevocationList, what: str) -> None:
    """Raise :class:`CertificateError` naming ``what`` when a serial number RFC 5280 (4.1.2.2) forbids, zero or
    negative, is in ``parsed``: a certificate's own, or authorityKeyIdentifier's authorityCertSerialNumber (in
    a certificate or a CRL).  ``cryptography`` only warns about them (silenced by
    :func:`imgsign._internal.known_warnings.quiet`, since they are refused here); a later release raises."""
    serials = [parsed.serial_number] if isinstance(parsed, x509.Certificate) else []
    with contextlib.suppress(x509.ExtensionNotFound):
        identifier = parsed.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        if identifier.authority_cert_serial_number is not None:
            serials.append(identifier.authority_cert_serial_number)
    if any(serial <= 0 for serial in serials):
        raise CertificateError(f"refusing {what}: it holds a serial number that is zero or negative, "
                               f"which RFC 5280 (4.1.2.2) forbids")


def _parse(parse: Callable[[], list[x509.Certificate]]) -> list[x509.Certificate]:
    """Run ``parse`` (a ``cryptography`` certificate loader) and parse every extension of what it loaded
    (``cryptography`` parses them lazily), so that a certificate whose extensions do not parse (malformed,
    duplicated) or that holds a non-positive serial number is refused when it is read, not wherever an
    extension is first used (where ``DuplicateExtension``, say, is no ``ValueError``)."""
    with known_warnings.quiet():
        loaded = parse()
        for cert in loaded:
            try:
                for _ in cert.extensions:
                    pass
            except Exception as exc:  # noqa: BLE001 - whatever cryptography raises for it, the certificate is refused
                detail = " ".join(str(exc).split())[:160] or type(exc).__name__
                raise CertificateError(f"certificate {describe(cert)} has malformed extensions ({detail})") from None
            check_serials(cert, "a certificate")
        return loaded


def check_names(cert: x509.Certificate) -> x509.Certificate:
    """Return ``cert`` once what RFC 5280 requires of it holds; raise ValueError or :class:`CertificateError`.

    ``cryptography`` reads the names only when they are first used, so a certificate with a
    malformed name loads and then fails wherever it is named (a message, a store, a chain):
    every loader calls this, so such a certificate is refused when it is read.  Its serial number
    must be positive (RFC 5280 4.1.2.2), which ``cryptography`` only warns about today.
    """
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    if cert.serial_number <= 0:
        raise CertificateError(f"refusing certificate {describe(cert)}: {_SERIAL_FORBIDDEN}")
    return cert


def describe(cert: x509.Certificate) -> str:
    """Short human name: the subject, RFC 4514, safe to print (a subject may hold control characters)."""
    from imgsign._internal.untrusted import safe

    return safe(cert.subject.rfc4514_string()) or f"serial {cert.serial_number:#x}"


def certificate_public_key(cert: x509.Certificate) -> PublicKey:
    """The certificate's key; binary-curve keys (and DSA, when :mod:`imgsign.keys.loading` says so) are
    handed to the OpenSSL backend, and an RSASSA-PSS key is read from its SubjectPublicKeyInfo to keep its
    parameters."""
    try:
        if cert.public_key_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
            with pyca_dsa.quiet():
                key = cert.public_key()
            return public_key_from_pyca(key)
    except (crypto_exceptions.UnsupportedAlgorithm, ValueError):
        pass
    try:
        return public_key_from_spki(certificate_spki_der(cert))
    except UnsupportedAlgorithm as exc:
        raise UnsupportedAlgorithm(f"certificate {describe(cert)}: {exc}") from None


def certificate_spki_der(cert: x509.Certificate) -> bytes:
    """DER SubjectPublicKeyInfo of ``cert``, read without asking ``cryptography`` to load the key."""
    from cryptography.hazmat.primitives.serialization import Encoding
    from pyasn1.codec.der import decoder, encoder
    from pyasn1.error import PyAsn1Error
    from pyasn1_modules import rfc5280

    try:
        parsed, _ = decoder.decode(cert.public_bytes(Encoding.DER), asn1Spec=rfc5280.Certificate())
    except (PyAsn1Error, ValueError, TypeError, OverflowError) as exc:  # pyasn1 raises all of these on bad input
        raise CertificateError(f"cannot read the certificate's public key info ({str(exc)[:120]})") from None
    spki: bytes = encoder.encode(parsed["tbsCertificate"]["subjectPublicKeyInfo"])
    return spki


def check_signing_certificate(cert: x509.Certificate, policy: Policy = DEFAULT_POLICY) -> None:
    """Refuse a certificate that may not sign images now.

    Dates (unless ``policy.ignore_certificate_dates``); keyUsage, when present, must
    allow digitalSignature; extendedKeyUsage, when present, must allow codeSigning (or
    anyExtendedKeyUsage).  A certificate without these extensions, as ``openssl x509
    -req`` makes by default, is unrestricted per RFC 5280.
    """
    name = describe(cert)
    if not policy.ignore_certificate_dates:
        check_dates(cert, policy.certificate_time())
    try:
        extensions = cert.extensions
    except ValueError as exc:
        raise CertificateError(f"certificate {name} has malformed extensions ({str(exc)[:120]})") from None
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not usage.digital_signature:
            raise CertificateError(f"certificate {name} may not sign: its keyUsage does not allow digitalSignature")
    try:
        purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not {ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(purposes):
        names = ", ".join(getattr(oid, "_name", oid.dotted_string) for oid in purposes)
        raise CertificateError(
            f"certificate {name} may not sign code: its extendedKeyUsage ({names}) lacks codeSigning"
        )


def check_dates(cert: x509.Certificate, now: datetime.datetime) -> None:
    """Raise :class:`CertificateNotYetValid` or :class:`CertificateExpired` unless ``cert`` is valid at ``now``."""
    if now < cert.not_valid_before_utc:
        raise CertificateNotYetValid(
            f"certificate {describe(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(
            f"certificate {describe(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )


def certificate_for_key(found: list[x509.Certificate], key: PublicKey, key_name: str) -> x509.Certificate:
    """The certificate for ``key`` among ``found`` (a CA's reply: the certificate, perhaps with its chain),
    checked to be a signing certificate (usage; its dates are checked whenever it signs or verifies).

    Raises :class:`CertificateKeyMismatch` when none is for ``key``, naming what was found.
    """
    spki = key.spki_der()
    mine = [cert for cert in found if certificate_spki_der(cert) == spki]
    if not mine:
        names = "; ".join(describe(cert) for cert in found[:3]) + ("; ..." if len(found) > 3 else "")
        raise CertificateKeyMismatch(
            f"the certificate ({names}) is not for {key_name}: its public key is another one "
            f"(was another request signed?)"
        )
    check_signing_certificate(mine[0], Policy(ignore_certificate_dates=True))
    return mine[0]
