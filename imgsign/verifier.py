"""Verification: does this data match these properties and this key?

Everything here takes bytes, chunks or a digest and returns None or raises an
:class:`~imgsign.errors.ImgsignError`; nothing opens a path or a network
connection.  Checks that need no data run before the first byte is read.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO

from imgsign.errors import IncompleteVerification, KeyTypeMismatch
from imgsign.keys import PublicKey
from imgsign.policy import DEFAULT_POLICY, Policy, check_key_strength
from imgsign.properties import SignatureProperties
from imgsign.signature_value import check_signature_value
from imgsign.stream import ImageData, Progress, iter_chunks

if TYPE_CHECKING:
    from cryptography import x509

    from imgsign.chain import TrustAnchors


def check_key_matches(properties: SignatureProperties, public_key: PublicKey, policy: Policy = DEFAULT_POLICY) -> None:
    """The declared key type must be exactly the key's (curve included), strong enough,
    and the signature value well formed for it."""
    declared = properties.key_type
    actual = public_key.key_type
    if actual is not declared:
        what = actual.value if actual is not None else "a key with no OpenStack key type"
        raise KeyTypeMismatch(
            f"{properties.key_type.value} is declared in img_signature_key_type but the "
            f"certificate's key is {what} ({public_key.describe()})"
        )
    check_key_strength(policy, declared.value, public_key.key_size, public_key.describe())
    public_key.check_hash_method(properties.hash_method)
    check_signature_value(properties.signature, declared, public_key.key_size)


class Verifier:
    """Verify one image incrementally: ``update()`` with its bytes, then ``verify()``."""

    def __init__(
        self, properties: SignatureProperties, public_key: PublicKey, *, policy: Policy = DEFAULT_POLICY
    ) -> None:
        check_key_matches(properties, public_key, policy)
        self._properties = properties
        self._key = public_key
        self._hasher = properties.hash_method.new()
        self._done = False

    @classmethod
    def for_certificate(
        cls, properties: SignatureProperties, certificate: x509.Certificate, *, policy: Policy = DEFAULT_POLICY,
        anchors: TrustAnchors | None = None,
    ) -> Verifier:
        """A verifier using the signing certificate's key, after checking the certificate itself
        and, with ``anchors``, its chain to a trusted certificate (:func:`imgsign.chain.validate_chain`)."""
        from imgsign import certificates

        if anchors is not None:
            from imgsign.chain import validate_chain

            validate_chain(certificate, anchors, policy)
        certificates.check_signing_certificate(certificate, policy)
        return cls(properties, certificates.certificate_public_key(certificate), policy=policy)

    @property
    def properties(self) -> SignatureProperties:
        return self._properties

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next piece of the image."""
        if self._done:
            raise RuntimeError("this Verifier is already finalized")
        self._hasher.update(data)

    def verify(self) -> None:
        """Return None if everything fed so far is exactly the signed image; raise otherwise."""
        if self._done:
            raise RuntimeError("this Verifier is already finalized")
        self._done = True
        digest = self._hasher.digest()
        self._key.verify_digest(self._properties.signature, digest, self._properties.hash_method)
        self._verified_digest = digest

    @property
    def verified_digest(self) -> bytes:
        """The image digest the signature was verified over (only after :meth:`verify` succeeded)."""
        digest: bytes | None = getattr(self, "_verified_digest", None)
        if digest is None:
            raise RuntimeError("nothing has been verified yet")
        return digest

    def verify_precomputed(self, digest: bytes) -> None:
        """Verify an already computed digest of the whole image, instead of ``update()``/``verify()``."""
        if self._done:
            raise RuntimeError("this Verifier is already finalized")
        if len(digest) != self._properties.hash_method.digest_size:
            raise ValueError(f"a {self._properties.hash_method.value} digest is "
                             f"{self._properties.hash_method.digest_size} bytes")
        self._done = True
        self._key.verify_digest(self._properties.signature, digest, self._properties.hash_method)
        self._verified_digest = digest

    def verify_data(self, data: ImageData, progress: Progress | None = None) -> None:
        """Stream a whole image (file object or iterable of bytes) through, then verify."""
        for chunk in iter_chunks(data):
            self.update(chunk)
            if progress is not None:
                progress(len(chunk))
        self.verify()


def verify_digest(
    properties: SignatureProperties, public_key: PublicKey, digest: bytes, *, policy: Policy = DEFAULT_POLICY
) -> None:
    """Verify an already computed digest of the image."""
    check_key_matches(properties, public_key, policy)
    if len(digest) != properties.hash_method.digest_size:
        raise ValueError(f"a {properties.hash_method.value} digest is {properties.hash_method.digest_size} bytes")
    public_key.verify_digest(properties.signature, digest, properties.hash_method)


def verifying_iter(chunks: Iterable[bytes], verifier: Verifier) -> Iterator[bytes]:
    """Pass ``chunks`` through unchanged while verifying them; raise at the end if they don't match.

    The import-pipeline call: memory stays constant.  The data is trustworthy
    only once this iterator is exhausted without raising; a consumer that
    stops early has verified nothing.
    """
    for chunk in chunks:
        verifier.update(chunk)
        yield chunk
    verifier.verify()


class VerifyingReader(io.RawIOBase):
    """A read-only file object over ``source`` that verifies as it is read.

    Reading the end of the stream verifies the signature: the read that would
    return ``b""`` raises instead if the data does not match.  Leaving a
    ``with`` block before the end raises :class:`IncompleteVerification`.
    """

    def __init__(self, source: BinaryIO, verifier: Verifier) -> None:
        super().__init__()
        self._source = source
        self._verifier = verifier
        self._verified = False
        self.bytes_read = 0

    @property
    def verified(self) -> bool:
        """True once the whole stream was read and the signature matched."""
        return self._verified

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._verified:
            return 0
        view = memoryview(buffer).cast("B")
        readinto = getattr(self._source, "readinto", None)
        if readinto is not None:
            n = readinto(view) or 0
        else:
            data = self._source.read(len(view))
            n = len(data)
            view[:n] = data
        if n:
            self._verifier.update(view[:n])
            self.bytes_read += n
            return n
        self._verifier.verify()
        self._verified = True
        return 0

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        super().__exit__(exc_type, exc, tb)  # type: ignore[arg-type]
        if exc_type is None and not self._verified:
            raise IncompleteVerification(
                f"the stream was closed after {self.bytes_read} bytes, before its end: it was not verified"
            )
