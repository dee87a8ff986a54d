"""Library calls for image pipelines (Glance import, mirroring, CI): verify staged data, re-sign.

:func:`verify_image` is the one call a pipeline task needs: properties as the
image has them, the data (file object or iterable of chunks, streamed in
constant memory), and where certificates come from; it returns a
:class:`VerifiedImage` or raises a typed :class:`~imgsign.errors.ImgsignError`.

:func:`resign` gives a converted image new ``img_signature*`` properties made
with a deployment's service key, and keeps the original signer's in
``imgsign_original_*`` properties.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from cryptography import x509

from imgsign.algorithms import HashMethod
from imgsign.certificates import load_certificate
from imgsign.chain import TrustAnchors, load_crl, validate_chain
from imgsign.errors import PropertiesError
from imgsign.keymanager import CertificateStore
from imgsign.keys import PrivateKey
from imgsign.policy import DEFAULT_POLICY, Policy
from imgsign.properties import SignatureProperties
from imgsign.properties import is_signed as is_signed  # re-exported: pipelines ask it before verify_image
from imgsign.signer import Signer
from imgsign.stream import ImageData, digest, iter_chunks
from imgsign.verifier import Verifier

#: Prefix of the properties that keep the original signature after a re-signing.
ORIGINAL_PREFIX = "imgsign_original_"


@dataclasses.dataclass(frozen=True)
class VerifiedImage:
    """What was verified: the properties, the signer, its validated chain (empty without trust ids),
    the digest the signature covers and the number of bytes read."""

    properties: SignatureProperties
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    digest: bytes
    size: int


def verify_image(
    data: ImageData,
    properties: Mapping[str, object],
    certificates: CertificateStore,
    *,
    trusted_ids: Sequence[str] = (),
    crls: Sequence[x509.CertificateRevocationList] = (),
    require_crls: bool = False,
    policy: Policy = DEFAULT_POLICY,
) -> VerifiedImage:
    """Verify ``data`` against its ``img_signature*`` properties; raise on any doubt.

    The signer's certificate is fetched from ``certificates`` by
    ``img_signature_certificate_uuid``.  With ``trusted_ids`` it must chain to
    one of those certificates (CRLs from ``crls`` and every CRL the store holds are checked; a store
    that cannot list its CRLs raises :class:`~imgsign.errors.KeyManagerError`, never a chain
    validated without them; ``require_crls`` needs a complete CRL in scope from every issuer,
    see :func:`imgsign.chain.validate_chain`).
    All checks that need no data run before the first byte is read.
    """
    parsed = SignatureProperties.from_mapping(properties)
    certificate = load_certificate(certificates.get_certificate(parsed.certificate_uuid))
    path: tuple[x509.Certificate, ...] = ()
    if trusted_ids:
        trusted = [load_certificate(certificates.get_certificate(i)) for i in trusted_ids]
        all_crls = [*crls, *(load_crl(der) for _, der in certificates.get_crls())]
        path = tuple(validate_chain(certificate, TrustAnchors(trusted, (), all_crls, require_crls), policy))
    verifier = Verifier.for_certificate(parsed, certificate, policy=policy)
    size = 0
    for chunk in iter_chunks(data):
        verifier.update(chunk)
        size += len(chunk)
    verifier.verify()
    return VerifiedImage(parsed, certificate, path, verifier.verified_digest, size)


def resign(
    data: ImageData,
    key: PrivateKey,
    certificate_id: str,
    original: SignatureProperties,
    *,
    hash_method: HashMethod | None = None,
    certificate: x509.Certificate | None = None,
    policy: Policy = DEFAULT_POLICY,
    verified_digest: bytes | None = None,
) -> dict[str, str] | None:
    """New ``img_signature*`` properties for ``data`` (e.g. the converted image), signed with a
    service key, plus ``imgsign_original_<property>`` for each original property.

    ``verified_digest``: the digest the original signature was verified over; when ``data``
    still has it (the conversion changed nothing), the original signature stands and None is
    returned.  Checks that need no data (key, certificate) run before the first byte is read.
    """
    if not certificate_id:
        raise PropertiesError("the service key's certificate id is empty")
    method = hash_method or original.hash_method
    signer = Signer(key, certificate_id, method, certificate=certificate, policy=policy)
    data_digest = digest(data, method)
    if verified_digest is not None and method is original.hash_method and data_digest == verified_digest:
        return None
    new = signer.sign_digest(data_digest).as_dict()
    for name, value in original.as_dict().items():
        new[ORIGINAL_PREFIX + name] = value
    return new
