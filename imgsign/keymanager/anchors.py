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
    from imgsign.trust_policy import Rule, TrustStore


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


def rule_anchors(rule: Rule, base_dir: str, store: CertificateStore | None, *,
                 intermediate_files: Sequence[str] = (), crl_files: Sequence[str] = ()) -> TrustAnchors | None:
    """The trust anchors of a trust policy rule's CA stores: their certificate files (relative to
    ``base_dir``, the policy file's directory) and key-manager ids, their intermediates and CRLs, every
    CRL stored in ``store``; None for a rule with no CA store.  ``store`` None: no key manager (a rule
    naming key-manager ids is then an error)."""
    return stores_anchors(rule.ca_stores, rule.name, base_dir, store, intermediate_files=intermediate_files,
                          crl_files=crl_files)


def base_anchors(rule: Rule, base_dir: str, store: CertificateStore | None) -> TrustAnchors | None:
    """The trust anchors of a ``hostSigned`` rule's ``baseTrustStores`` (as :func:`rule_anchors`); None for
    a rule that is not ``hostSigned``."""
    if rule.host_signed is None:
        return None
    return stores_anchors(rule.host_signed.base_trust_stores, rule.name, base_dir, store)


def stores_anchors(stores: Sequence[TrustStore], rule_name: str, base_dir: str, store: CertificateStore | None, *,
                   intermediate_files: Sequence[str] = (), crl_files: Sequence[str] = ()) -> TrustAnchors | None:
    """The trust anchors of trust stores of type ca (of rule ``rule_name``); None for none."""
    import os

    from imgsign import certificates, chain
    from imgsign._internal.files import read_small_file
    from imgsign.errors import KeyManagerError

    stores = [s for s in stores if s.type == "ca"]
    if not stores:
        return None

    def path(name: str) -> str:
        return os.path.join(base_dir, name)  # an absolute name stays as it is

    def certs(files: Sequence[str], what: str) -> list[x509.Certificate]:
        return [c for name in files for c in certificates.load_certificates(read_small_file(path(name), what))]

    ids = [i for s in stores for i in s.key_manager_ids]
    trusted = certs([f for s in stores for f in s.certificate_files], "trusted certificates")
    intermediates = certs([*(f for s in stores for f in s.intermediate_files), *intermediate_files],
                          "intermediate certificates")
    crls = [chain.load_crl(read_small_file(path(name), "CRL"))
            for name in (*(f for s in stores for f in s.crl_files), *crl_files)]
    depths = [s.max_chain_depth for s in stores if s.max_chain_depth is not None]
    require = any(s.require_crls for s in stores)
    if store is None:
        if ids:
            raise KeyManagerError(f"trust policy rule {rule_name} names key-manager ids, and no key manager is "
                                  "configured here")
        return chain.TrustAnchors(trusted, intermediates, crls, require_crls=require,
                                  max_depth=min(depths) if depths else chain.DEFAULT_MAX_DEPTH)
    return fetch_trust_anchors(store, ids, trusted=trusted, intermediates=intermediates, crls=crls,
                               require_crls=require, max_depth=min(depths) if depths else None)


def rule_tsa_roots(rule: Rule, base_dir: str, store: CertificateStore | None) -> list[x509.Certificate]:
    """The certificates of a trust policy rule's ``tsa`` stores (files relative to ``base_dir``, the policy
    file's directory, and key-manager ids): the timestamp authorities its RFC 3161 timestamps must chain to."""
    import os

    from imgsign import certificates
    from imgsign._internal.files import read_small_file
    from imgsign.errors import KeyManagerError

    files = [f for s in rule.tsa_stores for f in s.certificate_files]
    ids = [i for s in rule.tsa_stores for i in s.key_manager_ids]
    roots = [c for name in files
             for c in certificates.load_certificates(read_small_file(os.path.join(base_dir, name), "TSA certificates"))]
    if ids and store is None:
        raise KeyManagerError(f"trust policy rule {rule.name} names key-manager ids, and no key manager is "
                              "configured here")
    return roots + [fetch_certificate(store, i) for i in ids] if store is not None else roots
