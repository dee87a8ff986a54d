"""Binary-curve keys and certificates, made by the system OpenSSL."""

from __future__ import annotations

import dataclasses
import secrets
import subprocess

from cryptography import x509

from imgsign._internal import openssl
from imgsign.algorithms import KeyType
from imgsign.errors import BackendUnavailable, CertificateError, PrivateKeyError

_CONFIG = b"""\
[req]
distinguished_name = dn
prompt = no
string_mask = utf8only
[dn]
[v3_leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl_subject(name: x509.Name) -> str:
    """``-subj`` form (``/CN=a/O=b``) of an X.509 name, escaping OpenSSL's separators."""
    parts = []
    for rdn in name.rdns:
        parts.append("+".join(f"{a.rfc4514_attribute_name}={_escape(str(a.value))}" for a in rdn))
    return "/" + "/".join(parts)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("/", "\\/").replace("+", "\\+")


def _check(result: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if result.returncode != 0 or not result.stdout:
        raise BackendUnavailable(f"openssl could not {what}: {openssl.first_error_line(result)}")
    return result.stdout


@dataclasses.dataclass(frozen=True)
class CA:
    """The issuing CA: its PEM certificate, its PEM key and the key's passphrase."""

    cert_pem: bytes
    key_pem: bytes
    passphrase: bytes | None = None


def generate(
    key_type: KeyType, name: x509.Name, days: int, issuer: CA | None, passphrase: bytes | None
) -> tuple[bytes, bytes]:
    """A new binary-curve key (PEM, encrypted with ``passphrase`` if given) and its certificate (PEM)."""
    path = openssl.require_curve(key_type)
    curve = key_type.curve_name
    key_der = _check(
        openssl.run(path, ["genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}",
                           "-pkeyopt", "ec_param_enc:named_curve", "-outform", "DER"]),
        f"generate a {curve} key",
    )
    subject = openssl_subject(name)
    serial = "0x" + secrets.token_hex(16)
    if issuer is None:
        cert_pem = _check(
            openssl.run(path, ["req", "-new", "-x509", "-key", "{0}", "-keyform", "DER", "-config", "{1}",
                               "-extensions", "v3_leaf", "-subj", subject, "-days", str(days),
                               "-set_serial", serial, "-sha256", "-utf8"], [key_der, _CONFIG]),
            "make the self-signed certificate",
        )
    else:
        csr = _check(
            openssl.run(path, ["req", "-new", "-key", "{0}", "-keyform", "DER", "-config", "{1}",
                               "-subj", subject, "-sha256", "-utf8"], [key_der, _CONFIG]),
            "make the certificate request",
        )
        result = openssl.run(
            path,
            ["x509", "-req", "-in", "{0}", "-CA", "{1}", "-CAkey", "{2}", "-passin", "fd:{fds[3]}",
             "-extfile", "{4}", "-extensions", "v3_leaf", "-days", str(days), "-set_serial", serial, "-sha256"],
            [csr, issuer.cert_pem, issuer.key_pem, (issuer.passphrase or b"") + b"\n", _CONFIG],
        )
        if result.returncode != 0:
            detail = openssl.first_error_line(result)
            if "match" in detail.lower():
                raise CertificateError(f"--ca-key does not belong to --ca-cert ({detail})")
            if "decrypt" in detail.lower() or "pass" in detail.lower():
                raise PrivateKeyError(f"cannot load --ca-key ({detail})")
            raise BackendUnavailable(f"openssl could not issue the certificate: {detail}")
        cert_pem = result.stdout
    if passphrase:
        key_pem = _check(
            openssl.run(path, ["pkey", "-inform", "DER", "-in", "{0}", "-aes256", "-passout", "fd:{fds[1]}"],
                        [key_der, passphrase + b"\n"]),
            "encrypt the key",
        )
    else:
        key_pem = _check(openssl.run(path, ["pkey", "-inform", "DER", "-in", "{0}"], [key_der]), "write the key")
    return key_pem, cert_pem
