"""Binary-curve keys, made by the system OpenSSL (``cryptography`` cannot represent them)."""

from __future__ import annotations

import subprocess

from imgsign._internal import openssl
from imgsign.algorithms import KeyType
from imgsign.errors import BackendUnavailable


def _check(result: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if result.returncode != 0 or not result.stdout:
        raise BackendUnavailable(f"openssl could not {what}: {openssl.first_error_line(result)}")
    return result.stdout


def new_key(key_type: KeyType) -> bytes:
    """A new binary-curve key, unencrypted PKCS#8 DER (certificates for it are made by :mod:`imgsign.keygen`)."""
    path = openssl.require_curve(key_type)
    curve = key_type.curve_name
    return _check(
        openssl.run(path, ["genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}",
                           "-pkeyopt", "ec_param_enc:named_curve", "-outform", "DER"]),
        f"generate a {curve} key",
    )


def key_pem(key_type: KeyType, key_der: bytes, passphrase: bytes | None) -> bytes:
    """The PKCS#8 PEM of ``key_der``, encrypted (AES-256) with ``passphrase`` if given."""
    path = openssl.require_curve(key_type)
    if passphrase:
        return _check(
            openssl.run(path, ["pkey", "-inform", "DER", "-in", "{0}", "-aes256", "-passout", "fd:{fds[1]}"],
                        [key_der, passphrase + b"\n"]),
            "encrypt the key",
        )
    return _check(openssl.run(path, ["pkey", "-inform", "DER", "-in", "{0}"], [key_der]), "write the key")
