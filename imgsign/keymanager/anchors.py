"""Certificates and trust anchors fetched from a key manager (the CLI and the boot hook share this).

A chain is always validated with the CRLs stored in the key manager as well as any given ones:
the key manager is read for them whenever trust anchors are built, and one that cannot be
reached is an error (:class:`~imgsign.errors.KeyManagerError`), never a chain validated without
them.  The trusted certificates come first in :attr:`TrustAnchors.trusted`, in the order of their
ids (:func:`imgsign.compute.image_cache.bind_fetched` relies on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

    from imgsign.chain import TrustAnchors
    from imgsign.keymanager import CertificateStore


def fetch_certificate(store: CertificateStore, cert_id: str) -> x509.Certificate:
    """The certificate the key manager holds under ``cert_id``."""
    from imgsign.certificates import load_certificate

    return load_certificate(store.get_certificate(cert_id))


def fetch_trust_anchors(
    store: CertificateStore, trusted_ids: Sequence[str], *,
    trusted: Sequence[x509.Certificate] = (), intermediates: Sequence[x509.Certificate] = (),
    crls: Sequence[x509.CertificateRevocationList] = (), require_crls: bool = False, max_depth: int | None = None,
) -> TrustAnchors:
    """The certificates of ``trusted_ids`` (in that order), then ``trusted``, with every stored CRL."""
    from imgsign import chain

    fetched = [fetch_certificate(store, cert_id) for cert_id in trusted_ids]
    stored_crls = [chain.load_crl(der) for _, der in store.get_crls()]
    return chain.TrustAnchors(
        [*fetched, *trusted], list(intermediates), [*crls, *stored_crls], require_crls=require_crls,
        max_depth=chain.DEFAULT_MAX_DEPTH if max_depth is None else max_depth,
    )
