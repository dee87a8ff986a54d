"""Signing: image bytes in, the four ``img_signature*`` properties out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgsign.algorithms import HashMethod, KeyType
from imgsign.errors import CertificateKeyMismatch, KeyTypeMismatch, UnsupportedAlgorithm
from imgsign.keys import PrivateKey
from imgsign.policy import DEFAULT_POLICY, Policy, check_key_strength
from imgsign.properties import SignatureProperties, check_certificate_id
from imgsign.stream import ImageData, Progress, iter_chunks

if TYPE_CHECKING:
    from cryptography import x509


class Signer:
    """Sign one image incrementally: ``update()`` with its bytes, then ``finalize()``.

    Every check that does not need the data (key type, key size, certificate
    match and validity) runs in the constructor, before any byte is read.
    """

    def __init__(
        self,
        key: PrivateKey,
        certificate_uuid: str,
        hash_method: HashMethod = HashMethod.SHA256,
        *,
        key_type: KeyType | None = None,
        certificate: x509.Certificate | None = None,
        policy: Policy = DEFAULT_POLICY,
    ) -> None:
        actual = key.key_type
        if actual is None:
            raise UnsupportedAlgorithm(
                f"a {key.public_key().describe()} key has no OpenStack key type "
                f"(use RSA, DSA or one of the ECC_* curves)"
            )
        if key_type is not None and key_type is not actual:
            raise KeyTypeMismatch(f"key type {key_type.value} was requested but the key is {actual.value}")
        check_key_strength(policy, actual.value, key.key_size, key.public_key().describe())
        if certificate is not None:
            from imgsign import certificates

            cert_key = certificates.certificate_public_key(certificate)
            if cert_key.spki_der() != key.public_key().spki_der():
                raise CertificateKeyMismatch(
                    f"the private key does not belong to certificate {certificates.describe(certificate)}"
                )
            cert_key.check_hash_method(hash_method)  # an RSASSA-PSS certificate key's own hash
            certificates.check_signing_certificate(certificate, policy)
        self._key = key
        self._key_type = actual
        self._hash_method = hash_method
        self._certificate_uuid = check_certificate_id(certificate_uuid)
        self._hasher = hash_method.new()
        self._done = False

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next piece of the image."""
        if self._done:
            raise RuntimeError("this Signer is already finalized")
        self._hasher.update(data)

    def finalize(self) -> SignatureProperties:
        """Sign everything fed so far and return the properties."""
        if self._done:
            raise RuntimeError("this Signer is already finalized")
        self._done = True
        return self.sign_digest(self._hasher.digest())

    def sign_digest(self, digest: bytes) -> SignatureProperties:
        """Sign an already computed digest of the image."""
        if len(digest) != self._hash_method.digest_size:
            raise ValueError(f"a {self._hash_method.value} digest is {self._hash_method.digest_size} bytes")
        signature = self._key.sign_digest(digest, self._hash_method)
        return SignatureProperties(signature, self._hash_method, self._key_type, self._certificate_uuid)

    def sign(self, data: ImageData, progress: Progress | None = None) -> SignatureProperties:
        """Stream ``data`` (file object or iterable of bytes) through the signer."""
        for chunk in iter_chunks(data):
            self.update(chunk)
            if progress is not None:
                progress(len(chunk))
        return self.finalize()


def sign(
    data: ImageData,
    key: PrivateKey,
    certificate_uuid: str,
    hash_method: HashMethod = HashMethod.SHA256,
    *,
    key_type: KeyType | None = None,
    certificate: x509.Certificate | None = None,
    policy: Policy = DEFAULT_POLICY,
    progress: Progress | None = None,
) -> SignatureProperties:
    """Sign an image given as a binary file object or an iterable of bytes."""
    signer = Signer(key, certificate_uuid, hash_method, key_type=key_type, certificate=certificate, policy=policy)
    return signer.sign(data, progress)

