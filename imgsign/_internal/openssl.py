"""The system OpenSSL as the backend for keys ``cryptography`` cannot use.

* the binary ``ECC_SECT*`` curves, which ``cryptography`` 47 removed;
* DSA, once ``cryptography`` removes it (51 deprecates it), or when
  ``IMGSIGN_DSA_BACKEND=openssl`` asks for it (:mod:`imgsign.keys.loading` decides).

imgsign still hashes in-process and hands only the digest to
``openssl pkeyutl``.  Keys, digests and signatures reach the child through
pipes (``/dev/fd/N``), never through temporary files or argv; the child has
no controlling terminal and no stdin, so it can never prompt.

The executable is ``$IMGSIGN_OPENSSL`` or ``openssl`` on ``PATH``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence

from imgsign._internal.asn1 import DSA_OID, EC_PUBLIC_KEY_OID, dsa_sizes, spki_algorithm
from imgsign.algorithms import HashMethod, KeyType
from imgsign.errors import (
    BackendUnavailable,
    ImgsignError,
    InputError,
    InvalidSignature,
    PrivateKeyError,
    UnsupportedAlgorithm,
)
from imgsign.keys import PrivateKey, PublicKey

_TIMEOUT_SECONDS = 60
_PIPE_LIMIT = 60 * 1024  # every input must fit in one pipe buffer (64 KiB on Linux)
#: A binary-curve SubjectPublicKeyInfo is under 200 bytes (sect571: 145-byte point), a 4096-bit DSA one about
#: 1,600 (p, g and y of 512 bytes each); anything much longer is not one.
_MAX_SPKI = {KeyType.DSA: 2048}
_MAX_EC_SPKI = 1024
_CURVE_BITS = {"sect409k1": 409, "sect409r1": 409, "sect571k1": 571, "sect571r1": 571}


def executable(purpose: str = "the ECC_SECT* key types (OpenSSL with binary EC curves)") -> str:
    """Path of the openssl binary to use, or raise :class:`BackendUnavailable` naming ``purpose``."""
    name = os.environ.get("IMGSIGN_OPENSSL") or "openssl"
    path = shutil.which(name)
    if path is None:
        raise BackendUnavailable(
            f"imgsign needs the openssl command line for {purpose}, but {name!r} was not found "
            f"(set IMGSIGN_OPENSSL or install openssl)"
        )
    return path


@functools.lru_cache(maxsize=8)
def _supported_curves(path: str) -> frozenset[str]:
    result = subprocess.run(
        [path, "ecparam", "-list_curves"], capture_output=True, stdin=subprocess.DEVNULL,
        timeout=_TIMEOUT_SECONDS, check=False,
    )
    names = set()
    for line in result.stdout.decode("ascii", "replace").splitlines():
        head = line.split(":", 1)[0].strip()
        if head:
            names.add(head)
    return frozenset(names)


def require(key_type: KeyType) -> str:
    """Return the openssl path if it can use ``key_type`` keys, else raise :class:`BackendUnavailable`."""
    if key_type is KeyType.DSA:
        return executable("DSA keys (this cryptography does not handle DSA)")
    return require_curve(key_type)


def require_curve(key_type: KeyType) -> str:
    """Return the openssl path if it supports ``key_type``'s curve, else raise."""
    path = executable()
    curve = key_type.curve_name or ""
    if curve not in _supported_curves(path):
        raise BackendUnavailable(
            f"{key_type.value} needs OpenSSL with binary EC curves, but {path} does not "
            f"support {curve} (it was built without EC2M); use an OpenSSL that has it "
            f"(IMGSIGN_OPENSSL=/path/to/openssl)"
        )
    return path


def run(path: str, args: Sequence[str], inputs: Sequence[bytes] = ()) -> subprocess.CompletedProcess[bytes]:
    """Run ``openssl *args`` with ``inputs`` fed through pipes.

    In ``args``, ``{0}``, ``{1}``... become ``/dev/fd/N`` paths of those pipes and
    ``{fds[0]}``... their bare descriptor numbers (for ``-passin fd:N``).  Callers check
    their inputs' sizes with precise errors first (see :func:`check_pipe_input`); an input
    that still does not fit is an :class:`InputError`.
    """
    for data in inputs:
        check_pipe_input(data, InputError, f"an input of openssl {args[0] if args else ''}".rstrip())
    read_fds: list[int] = []
    try:
        for data in inputs:
            read_fd, write_fd = os.pipe()
            read_fds.append(read_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(write_fd, view):]
            finally:
                os.close(write_fd)
        paths = [f"/dev/fd/{fd}" for fd in read_fds]
        argv = [path, *(arg.format(*paths, fds=read_fds) for arg in args)]
        try:
            return subprocess.run(
                argv, pass_fds=read_fds, capture_output=True, stdin=subprocess.DEVNULL,
                start_new_session=True, timeout=_TIMEOUT_SECONDS, check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendUnavailable(f"could not run {path}: {exc}") from None
    finally:
        for fd in read_fds:
            os.close(fd)


def check_pipe_input(data: bytes, error: type[ImgsignError], what: str) -> None:
    """Raise ``error`` unless ``data`` fits in one pipe buffer (what :func:`run` can feed openssl)."""
    if len(data) > _PIPE_LIMIT:
        raise error(f"{what} is {len(data)} bytes, more than the {_PIPE_LIMIT // 1024} KiB the OpenSSL backend takes")


def first_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    text = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
    return text.splitlines()[0][:200] if text else f"exit status {result.returncode}"


def key_type_of_spki(spki_der: bytes) -> KeyType:
    """The key type of a SubjectPublicKeyInfo this backend handles: DSA or a named binary curve."""
    algorithm, curve_oid = spki_algorithm(spki_der)
    if algorithm == DSA_OID:
        return KeyType.DSA
    if algorithm != EC_PUBLIC_KEY_OID:
        raise UnsupportedAlgorithm(f"public key algorithm {algorithm} is not DSA or EC")
    if curve_oid is None:
        raise UnsupportedAlgorithm("the key is not on a named EC curve")
    return KeyType.for_curve_oid(curve_oid)


class OpenSSLPublicKey(PublicKey):
    """A binary-curve or DSA public key, verified with ``openssl pkeyutl -verify``."""

    def __init__(self, spki_der: bytes, key_type: KeyType) -> None:
        limit = _MAX_SPKI.get(key_type, _MAX_EC_SPKI)
        if len(spki_der) > limit:
            raise UnsupportedAlgorithm(
                f"{key_type.value} public keys are under {limit} bytes; this one is {len(spki_der)} bytes"
            )
        self._spki = spki_der
        self._key_type = key_type
        if key_type is KeyType.DSA:
            self._bits = dsa_sizes(spki_der).p_bits
        else:
            self._bits = _CURVE_BITS.get(key_type.curve_name or "", 0)

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    @property
    def key_size(self) -> int:
        return self._bits

    def describe(self) -> str:
        if self._key_type is KeyType.DSA:
            return f"DSA {self._bits}-bit (via OpenSSL)"
        return f"EC {self._key_type.curve_name} (via OpenSSL)"

    def spki_der(self) -> bytes:
        return self._spki

    def verify_digest(self, signature: bytes, digest: bytes, hash_method: HashMethod) -> None:
        from imgsign.signature_value import check_signature_value

        check_signature_value(signature, self._key_type, self.key_size)  # bounds its size before openssl
        path = require(self._key_type)
        result = run(
            path,
            ["pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "{0}", "-in", "{1}", "-sigfile", "{2}"],
            [self._spki, digest, signature],
        )
        if result.returncode == 0 and b"Signature Verified Successfully" in result.stdout:
            return
        if b"Signature Verification Failure" in result.stdout or result.returncode == 1:
            raise InvalidSignature(
                "signature verification failed: the image data does not match the signature"
            )
        raise BackendUnavailable(f"openssl could not verify: {first_error_line(result)}")


class OpenSSLPrivateKey(PrivateKey):
    """A binary-curve or DSA private key, signed with ``openssl pkeyutl -sign``.

    Holds the unencrypted PKCS#8 DER in memory only (as an in-process key would).
    """

    def __init__(self, pkcs8_der: bytes, spki_der: bytes, key_type: KeyType) -> None:
        self._der = pkcs8_der
        self._public = OpenSSLPublicKey(spki_der, key_type)

    def __repr__(self) -> str:  # never show key material
        return f"<OpenSSLPrivateKey {self._public.describe()}>"

    @property
    def key_type(self) -> KeyType:
        return self._public.key_type

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> PublicKey:
        return self._public

    def export_pkcs8_der(self) -> bytes:
        return self._der

    def sign_digest(self, digest: bytes, hash_method: HashMethod) -> bytes:
        path = require(self.key_type)
        result = run(path, ["pkeyutl", "-sign", "-keyform", "DER", "-inkey", "{0}", "-in", "{1}"], [self._der, digest])
        if result.returncode != 0 or not result.stdout:
            raise BackendUnavailable(f"openssl could not sign: {first_error_line(result)}")
        return result.stdout


def load_private_key(data: bytes, passphrase: bytes | None, *, pem: bool) -> OpenSSLPrivateKey:
    """Load a key ``cryptography`` refused (or may not use); only binary-curve EC and DSA keys are accepted."""
    check_pipe_input(data, PrivateKeyError, "the private key")
    if passphrase is not None:
        check_pipe_input(passphrase, PrivateKeyError, "the passphrase")
    path = executable("keys cryptography cannot load (binary-curve EC, DSA)")
    inform = "PEM" if pem else "DER"
    # -passin fd:N reads the first line of its own pipe; an empty line for a plain key.
    secret = (passphrase or b"") + b"\n"
    result = run(path, ["pkey", "-inform", inform, "-in", "{0}", "-passin", "fd:{fds[1]}", "-outform", "DER"],
                 [data, secret])
    if result.returncode != 0 or not result.stdout:
        detail = first_error_line(result)
        if passphrase is not None and ("decrypt" in detail.lower() or "bad" in detail.lower()):
            raise PrivateKeyError("cannot decrypt the private key: wrong passphrase")
        raise PrivateKeyError(f"not a readable {inform} private key (openssl: {detail})")
    pkcs8 = result.stdout
    pub = run(path, ["pkey", "-inform", "DER", "-in", "{0}", "-pubout", "-outform", "DER"], [pkcs8])
    if pub.returncode != 0 or not pub.stdout:
        raise PrivateKeyError(f"openssl could not derive the public key ({first_error_line(pub)})")
    key_type = key_type_of_spki(pub.stdout)
    if not (key_type.is_binary_curve or key_type is KeyType.DSA):
        raise UnsupportedAlgorithm(f"{key_type.value} key could not be loaded by cryptography")
    require(key_type)
    return OpenSSLPrivateKey(pkcs8, pub.stdout, key_type)
