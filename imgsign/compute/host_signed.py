"""Adopting a host-signed image: its provenance statement, checked once online, recorded for offline boots.

A snapshot ``imgsign gateway`` signed carries a provenance statement (:mod:`imgsign.provenance`).  A trust
policy's ``hostSigned`` rule trusts it only inside the project that made it, and only when the base image
it was made from was itself trusted then (:class:`imgsign.trust_policy.HostSigned`).  The boot hook decides
offline, so adoption (:mod:`imgsign.compute.self_adoption`) checks here what needs the network, and the
trust record keeps the outcome (:class:`~imgsign.compute.trust_record.ProvenanceRecord`):

* the statement verifies with the image's signing certificate and names this image and the digest
  ``img_signature`` signs (else the record says why it does not, and nothing more);
* the base's signing certificate, read from the key manager by the id the statement names
  (``certificateId``), is the one it names by SHA-256;
* that certificate chained, at the statement's ``createdAt``, to which trusted certificates of the
  policy's ``baseTrustStores`` (of every ``hostSigned`` rule together; each on its own, as for the
  signer's chain): their fingerprints are recorded, and at boot the rule that applies must hold one of
  them (:func:`imgsign.compute.boot_policy.check_record`).  Revocation is not checked: the CRLs of that
  moment are gone.

Nothing is gathered when the policy has no ``hostSigned`` rule or the image has no statement.  A
key manager that cannot give the base's certificate fails the adoption (the next boot tries again), as
it does for the signer's; a certificate that is not the one the statement names, or a chain that does
not reach a base store, is recorded as such (and refused at boot under a ``hostSigned`` rule).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from imgsign.compute.trust_record import ProvenanceRecord, fingerprint
from imgsign.errors import ImgsignError
from imgsign.policy import Policy

if TYPE_CHECKING:
    import datetime

    from cryptography import x509

    from imgsign.chain import TrustAnchors
    from imgsign.keymanager import CertificateStore
    from imgsign.trust_policy import TrustPolicy, TrustStore


@dataclasses.dataclass(frozen=True)
class BaseStores:
    """The ``baseTrustStores`` of every ``hostSigned`` rule of a policy, together (duplicates once)."""

    stores: tuple[TrustStore, ...]

    @classmethod
    def of(cls, trust: TrustPolicy | None) -> BaseStores | None:
        """None when there is no policy or it has no ``hostSigned`` rule."""
        if trust is None:
            return None
        stores = tuple(dict.fromkeys(s for r in trust.rules if r.host_signed is not None
                                     for s in r.host_signed.base_trust_stores if s.type == "ca"))
        return cls(stores) if stores else None

    @property
    def key_manager_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i for s in self.stores for i in s.key_manager_ids))

    def anchors(self, fetched: Sequence[x509.Certificate], base_dir: str) -> TrustAnchors:
        """The trust anchors: ``fetched`` (the certificates of :attr:`key_manager_ids`, in order), then the stores'
        files (relative to ``base_dir``, the policy's directory; read only if no one but root can change them),
        with their intermediates."""
        from imgsign import chain
        from imgsign.certificates import load_certificates
        from imgsign.compute.boot_policy import read_root_file

        def certificates(names: Sequence[str], what: str) -> list[x509.Certificate]:
            return [c for name in dict.fromkeys(names)
                    for c in load_certificates(read_root_file(os.path.join(base_dir, name), what))]

        depths = [s.max_chain_depth for s in self.stores if s.max_chain_depth is not None]
        return chain.TrustAnchors(
            [*fetched, *certificates([f for s in self.stores for f in s.certificate_files], "trusted certificates")],
            certificates([f for s in self.stores for f in s.intermediate_files], "intermediate certificates"),
            max_depth=min(depths) if depths else chain.DEFAULT_MAX_DEPTH)


@dataclasses.dataclass(frozen=True)
class Found:
    """What adoption records, and the ``(key-manager id, certificate DER)`` of each base store id it fetched,
    for the id -> fingerprint bindings (:class:`~imgsign.compute.trust_record.AnchorStore`) it seals with the
    record: a boot turns a rule's ``baseTrustStores`` ids into certificates through them."""

    record: ProvenanceRecord
    fetched: tuple[tuple[str, bytes], ...] = ()


def has_provenance(properties: Mapping[str, object]) -> bool:
    from imgsign.provenance import PREFIX

    return any(isinstance(name, str) and name.startswith(PREFIX) for name in properties)


def fetch(image_id: str, properties: Mapping[str, object], certificate: x509.Certificate, store: CertificateStore,
          trust: TrustPolicy | None, base_dir: str, policy: Policy) -> Found | None:
    """Online: the provenance of image ``image_id`` (Glance's ``properties``, signed by ``certificate``) for the
    trust record; None when ``trust`` has no ``hostSigned`` rule or the image carries no statement.  ``store``:
    the key manager (the base's certificate, the base stores' ids).  Raises the key manager's error when it
    cannot give a certificate."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.keymanager.anchors import fetch_certificate

    stores = BaseStores.of(trust)
    if stores is None or not has_provenance(properties):
        return None
    fetched: list[tuple[str, x509.Certificate]] = []

    def base_anchors() -> TrustAnchors:
        fetched.extend((i, fetch_certificate(store, i)) for i in stores.key_manager_ids)
        return stores.anchors([c for _, c in fetched], base_dir)

    def base_certificate(certificate_id: str) -> x509.Certificate:
        return fetch_certificate(store, certificate_id)

    record = record_of(image_id, properties, certificate, base_certificate=base_certificate,
                       base_anchors=base_anchors, policy=policy)
    return Found(record, tuple((i, c.public_bytes(Encoding.DER)) for i, c in fetched))


def record_of(image_id: str, properties: Mapping[str, object], certificate: x509.Certificate, *,
              base_certificate: Callable[[str], x509.Certificate], base_anchors: Callable[[], TrustAnchors],
              policy: Policy) -> ProvenanceRecord:
    """What to record of the statement in ``properties`` (see the module docstring).  ``base_certificate(id)``
    and ``base_anchors()`` are called only for a verified statement that names a base; what they raise
    propagates (the adoption fails)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.certificates import certificate_public_key, describe
    from imgsign.provenance import verify_provenance

    try:
        statement = verify_provenance(properties, certificate_public_key(certificate),
                                      hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest(),
                                      image_id=image_id, policy=policy)
    except ImgsignError as exc:
        return ProvenanceRecord(False, exc.message)
    stated = ProvenanceRecord(True, None, statement.project_id, statement.host, None,
                              statement.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    base = statement.base
    if base is None:
        return stated
    stated = dataclasses.replace(stated, base_image_id=base.image_id)
    try:
        base_cert = base_certificate(base.certificate_id)
    except ImgsignError as exc:
        exc.message = (f"the certificate {base.certificate_id} of base image {base.image_id}, which the provenance of "
                       f"image {image_id} names, cannot be read: {exc.message}")
        raise
    der = base_cert.public_bytes(Encoding.DER)
    if hashlib.sha256(der).digest() != base.certificate_sha256:
        return dataclasses.replace(stated, base_error=(
            f"certificate {base.certificate_id} is not the one that signed the base image {base.image_id} (the "
            f"provenance names SHA-256 {base.certificate_sha256.hex()})"))
    anchored, problem = chained_at(base_cert, base_anchors(), statement.created_at)
    return dataclasses.replace(stated, base_certificate_der=der, base_anchor_fingerprints=anchored, base_error=None
                               if problem is None else f"its signer {describe(base_cert)} did not chain to a "
                                                       f"certificate of the baseTrustStores then: {problem}")


def chained_at(certificate: x509.Certificate, anchors: TrustAnchors,
               at: datetime.datetime) -> tuple[tuple[str, ...], str | None]:
    """The fingerprints of the trusted certificates of ``anchors`` ``certificate`` chains to at ``at``, each on
    its own (the others may help as intermediates), revocation not checked; and why there are none."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from imgsign.chain import build_path

    try:
        build_path(certificate, anchors, at)
    except ImgsignError as exc:
        return (), exc.message
    found = []
    for trusted in anchors.trusted:
        helpers = [*anchors.intermediates, *(c for c in anchors.trusted if c is not trusted)]
        try:
            build_path(certificate, dataclasses.replace(anchors, trusted=[trusted], intermediates=helpers), at)
        except ImgsignError:
            continue
        found.append(fingerprint(trusted.public_bytes(Encoding.DER)))
    if not found:
        return (), "it chains to the trusted certificates only together"
    return tuple(dict.fromkeys(found)), None
