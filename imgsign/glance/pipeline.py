"""Library calls for image pipelines (Glance import, mirroring, CI): verify staged data, re-sign.

:func:`verify_image` is the one call a pipeline task needs: properties as the
image has them, the data (file object or iterable of chunks, streamed in
constant memory), and where certificates come from; it returns a
:class:`VerifiedImage` or raises a typed :class:`~imgsign.errors.ImgsignError`.

:func:`resign` gives a converted image new ``img_signature*`` properties made
with a deployment's service key (and, for a qcow2 result, the raw-digest
statement), and keeps the original signer's in ``imgsign_original_*`` properties.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import x509

from imgsign._internal.raw_digest import QCOW2_MAGIC
from imgsign.algorithms import HashMethod
from imgsign.certificates import load_certificate
from imgsign.chain import TrustAnchors, load_crl
from imgsign.errors import InputError, PropertiesError
from imgsign.keymanager import CertificateStore
from imgsign.keys import PrivateKey
from imgsign.policy import DEFAULT_POLICY, Policy
from imgsign.properties import SignatureProperties
from imgsign.properties import is_signed as is_signed  # re-exported: pipelines ask it before verify_image
from imgsign.signer import Signer
from imgsign.stream import ImageData, iter_chunks
from imgsign.trust_policy import Decision, Rule, Selection
from imgsign.verifier import Verifier

#: Prefix of the properties that keep the original signature after a re-signing.
ORIGINAL_PREFIX = "imgsign_original_"


@dataclasses.dataclass(frozen=True)
class VerifiedImage:
    """What was verified: the properties, the signer, its validated chain (empty when no chain was checked),
    the digest the signature covers and the number of bytes read; the decision of the trust policy rule
    that applied (the built-in policy's for the flat options), the subjects of the validated path, the
    timestamp's description and the OCSP answers used."""

    properties: SignatureProperties
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    digest: bytes
    size: int
    #: The decision of the rule that applied (its warnings are what it only logs).
    decision: Decision | None = None
    path: tuple[str, ...] = ()
    timestamp: Mapping[str, object] | None = None
    ocsp: tuple[Mapping[str, object], ...] = ()


def verify_image(
    data: ImageData,
    properties: Mapping[str, object],
    certificates: CertificateStore,
    *,
    trusted_ids: Sequence[str] = (),
    crls: Sequence[x509.CertificateRevocationList] = (),
    require_crls: bool = False,
    policy: Policy = DEFAULT_POLICY,
    selection: Selection | None = None,
    rule_anchors: Callable[[Rule], TrustAnchors | None] | None = None,
    base_anchors: Callable[[Rule], TrustAnchors | None] | None = None,
    image_id: str | None = None,
    tsa_roots: Sequence[x509.Certificate] = (),
    rule_tsa_roots: Callable[[Rule], Sequence[x509.Certificate]] | None = None,
    ocsp: str = "strict",
    ocsp_timeout: float = 10.0,
) -> VerifiedImage:
    """Verify ``data`` against its ``img_signature*`` properties; raise on any doubt.

    The signer's certificate is fetched from ``certificates`` by ``img_signature_certificate_uuid``.
    Who may sign is a trust policy rule's to decide (:mod:`imgsign.trust_policy`):

    * ``selection``: the rule that applies to the image (:func:`imgsign.trust_policy.select`), against the
      anchors ``rule_anchors`` loads for it and the TSA certificates of its ``tsa`` stores that
      ``rule_tsa_roots`` loads (a ``skip`` rule is the caller's to honour: nothing to verify); for a
      ``hostSigned`` rule, the image's provenance statement too, which must name ``image_id``, with the
      base image's certificate from ``certificates`` and the anchors ``base_anchors`` loads for its
      ``baseTrustStores``;
    * else the built-in policy of the flat options: with ``trusted_ids`` the signer must chain to one of
      those certificates (CRLs from ``crls`` and every CRL the store holds; a store that cannot list its
      CRLs raises :class:`~imgsign.errors.KeyManagerError`; ``require_crls`` needs a complete CRL in
      scope from every issuer), and ``tsa_roots`` are its TSA store; a compute host's signature is
      refused there (it vouches only under a ``hostSigned`` rule).

    Either way the evidence is :func:`imgsign.trust_evidence.image_evidence`'s, as for ``imgsign verify``:
    an RFC 3161 timestamp (``imgsign_tst_v1``) verified against the TSA certificates lets a certificate
    that has expired since count when it was valid at the timestamp; revocation is checked by OCSP beside
    the CRLs, as ``ocsp`` says (``strict``: the response stapled in ``properties``, then the responders;
    ``offline``: the stapled response only; ``off``: CRLs only; ``ocsp_timeout`` per exchange).
    All checks that need no data run before the first byte is read.
    """
    from imgsign import trust_evidence, trust_policy
    from imgsign._internal.ocsp_client import for_document

    parsed = SignatureProperties.from_mapping(properties)
    certificate = load_certificate(certificates.get_certificate(parsed.certificate_uuid))
    if selection is None:
        selection = trust_policy.select(trust_policy.builtin_policy(bool(trusted_ids), require_crls),
                                        trust_policy.ImageFacts())
        flat_trusted = [load_certificate(certificates.get_certificate(i)) for i in trusted_ids]

        def flat_anchors(rule: Rule) -> TrustAnchors | None:
            if not flat_trusted:
                return None
            return TrustAnchors(flat_trusted, (), [*crls, *(load_crl(der) for _, der in certificates.get_crls())],
                                require_crls)

        rule_anchors, roots = flat_anchors, list(tsa_roots)
    else:
        roots = list(rule_tsa_roots(selection.rule)) if rule_tsa_roots is not None else []
    rule = selection.rule
    anchors = rule_anchors(rule) if rule_anchors is not None else None
    gathered = trust_evidence.image_evidence(
        properties, parsed.signature, certificate, rule, anchors, roots, policy,
        ocsp=for_document(properties, ocsp, ocsp_timeout) if anchors is not None else None,
        base_anchors=base_anchors(rule) if base_anchors is not None and rule.host_signed is not None else None,
        base_certificate=lambda cert_id: load_certificate(certificates.get_certificate(cert_id)), image_id=image_id)
    decision = trust_policy.enforce(trust_policy.decide(selection, gathered.evidence))
    # The certificate's dates were the rule's to judge (its expiry action); its usage is checked below.
    verifier = Verifier.for_certificate(parsed, certificate,
                                        policy=dataclasses.replace(policy, ignore_certificate_dates=True))
    size = 0
    for chunk in iter_chunks(data):
        verifier.update(chunk)
        size += len(chunk)
    verifier.verify()
    return VerifiedImage(parsed, certificate, gathered.path, verifier.verified_digest, size, decision,
                         gathered.evidence.path, gathered.timestamp, tuple(gathered.ocsp_dicts()))


def resign(
    data: ImageData,
    key: PrivateKey,
    certificate_id: str | Callable[[], str],
    original: SignatureProperties,
    *,
    hash_method: HashMethod | None = None,
    certificate: x509.Certificate | None = None,
    policy: Policy = DEFAULT_POLICY,
    verified_digest: bytes | None = None,
    raw_digest: bool = True,
) -> dict[str, str] | None:
    """New ``img_signature*`` properties for ``data`` (e.g. the converted image), signed with a
    service key, plus ``imgsign_original_<property>`` for each original property.

    ``verified_digest``: the digest the original signature was verified over; when ``data``
    still has it (the conversion changed nothing), the original signature stands and None is
    returned.  ``certificate_id``: the id to emit, or a callable that returns it, called only when
    the data is signed (e.g. to store a copy of the certificate only then).  Checks that need no
    data (key, certificate) run before the first byte is read.

    When ``data`` is a qcow2 image (a format Nova converts to raw again), the raw-digest
    statement (``imgsign_raw_v1_*``, :mod:`imgsign.raw_statement`) is signed too, as ``imgsign
    sign`` does: ``data`` must then be an open file, read a second time for the raw conversion
    (:class:`~imgsign.errors.InputError` for chunks; ``raw_digest=False`` leaves the statement out).
    """
    if isinstance(certificate_id, str) and not certificate_id:
        raise PropertiesError("the service key's certificate id is empty")
    method = hash_method or original.hash_method
    # Every check that needs no data, before the first byte is read (the id comes later).
    Signer(key, certificate_id if isinstance(certificate_id, str) else "pending", method, certificate=certificate,
           policy=policy)
    data_digest, head = _digest_and_head(data, method)
    if verified_digest is not None and method is original.hash_method and data_digest == verified_digest:
        return None
    chosen = certificate_id if isinstance(certificate_id, str) else certificate_id()
    signed = Signer(key, chosen, method, certificate=certificate, policy=policy).sign_digest(data_digest)
    new = signed.as_dict()
    if raw_digest and head.startswith(QCOW2_MAGIC):
        new |= _raw_statement(data, key, signed, data_digest)
    for name, value in original.as_dict().items():
        new[ORIGINAL_PREFIX + name] = value
    return new


def data_digest(data: ImageData, method: HashMethod) -> bytes:
    """``data``'s digest with ``method``, streamed in constant memory."""
    return _digest_and_head(data, method)[0]


def _digest_and_head(data: ImageData, method: HashMethod) -> tuple[bytes, bytes]:
    """``data``'s digest, and its first bytes (enough for the qcow2 magic), in one read."""
    hasher = method.new()
    head = b""
    for chunk in iter_chunks(data):
        if len(head) < len(QCOW2_MAGIC):
            head += bytes(chunk[:len(QCOW2_MAGIC) - len(head)])
        hasher.update(chunk)
    return hasher.digest(), head


def _raw_statement(data: ImageData, key: PrivateKey, signed: SignatureProperties, data_digest: bytes) -> dict[str, str]:
    """The raw-digest statement of the qcow2 image ``data`` (an open file), just signed."""
    from imgsign._internal.raw_digest import sign_raw_statement

    name = str(getattr(data, "name", "image"))
    try:
        fd = data.fileno()  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        raise InputError(f"{name} is a qcow2 image given as chunks: its raw-digest statement needs the open file, "
                         f"read again for the raw conversion (or resign with raw_digest=False)") from None
    return sign_raw_statement(fd, name, key, signed, data_digest).as_dict()


def open_service_key(service_key: str | None, service_key_id: str | None,
                     get_private_key: Callable[[str], bytes], where: str = "the configuration",
                     conf: Any = None) -> PrivateKey:
    """The key a pipeline re-signs with: ``service_key``, a key that never leaves its token or service
    (a ``pkcs11:`` URI, ``hashivault://NAME``), or else the key manager's private key
    ``service_key_id`` (PKCS#8 from ``get_private_key``).  Exactly one must be given
    (:class:`PropertiesError` otherwise).  ``conf``: the backends' sections (as in imgsign.conf)."""
    from imgsign.keys.loading import is_key_reference, load_private_key, open_signing_key

    if service_key and service_key_id:
        raise PropertiesError(f"{where} sets both service_key and service_key_id: give one")
    if service_key:
        if not is_key_reference(service_key):
            raise PropertiesError(f"{where} service_key is not a key reference (pkcs11:... or hashivault://NAME)")
        return open_signing_key(service_key, conf=conf)
    if not service_key_id:
        raise PropertiesError(f"{where} sets neither service_key_id nor service_key: nothing to re-sign with")
    return load_private_key(get_private_key(service_key_id))
