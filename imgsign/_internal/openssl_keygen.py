"""Keys made by the system OpenSSL: binary-curve keys (``cryptography`` cannot represent them) and DSA
keys when ``cryptography`` does not handle DSA (see :mod:`imgsign.keys.loading`)."""

from __future__ import annotations

import subprocess

from imgsign._internal import openssl
from imgsign.algorithms import KeyType
from imgsign.errors import BackendUnavailable

#: DSA subprime sizes by prime size, as ``cryptography`` makes them (FIPS 186-4 where it has a size).
_DSA_Q_BITS = {1024: 160, 2048: 256, 3072: 256, 4096: 256}


def _check(result: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if result.returncode != 0 or not result.stdout:
        raise BackendUnavailable(f"openssl could not {what}: {openssl.first_error_line(result)}")
    return result.stdout


def new_key(key_type: KeyType, bits: int | None = None) -> bytes:
    """A new key, unencrypted PKCS#8 DER (certificates for it are made by :mod:`imgsign.keygen`).

    ``bits`` is a DSA key's size (a key of :data:`_DSA_Q_BITS`); curves take none.
    """
    path = openssl.require(key_type)
    if key_type is KeyType.DSA:
        if bits not in _DSA_Q_BITS:
            raise ValueError(f"DSA keys are {', '.join(map(str, _DSA_Q_BITS))} bits, not {bits}")
        parameters = _check(
            openssl.run(path, ["genpkey", "-genparam", "-algorithm", "DSA", "-pkeyopt", f"dsa_paramgen_bits:{bits}",
                               "-pkeyopt", f"dsa_paramgen_q_bits:{_DSA_Q_BITS[bits]}"]),
            f"generate {bits}-bit DSA parameters",
        )
        return _check(openssl.run(path, ["genpkey", "-paramfile", "{0}", "-outform", "DER"], [parameters]),
                      f"generate a {bits}-bit DSA key")
    curve = key_type.curve_name
    return _check(
        openssl.run(path, ["genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}",
                           "-pkeyopt", "ec_param_enc:named_curve", "-outform", "DER"]),
        f"generate a {curve} key",
    )


def key_pem(key_type: KeyType, key_der: bytes, passphrase: bytes | None) -> bytes:
    """The PKCS#8 PEM of ``key_der``, encrypted (AES-256) with ``passphrase`` if given."""
    path = openssl.require(key_type)
    if passphrase:
        return _check(
            openssl.run(path, ["pkey", "-inform", "DER", "-in", "{0}", "-aes256", "-passout", "fd:{fds[1]}"],
                        [key_der, passphrase + b"\n"]),
            "encrypt the key",
        )
    return _check(openssl.run(path, ["pkey", "-inform", "DER", "-in", "{0}"], [key_der]), "write the key")
