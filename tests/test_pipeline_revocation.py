"""imgsign.glance.pipeline.verify_image (the Glance plugin's check): stored CRLs always count,
an unreachable key manager refuses, and only a complete CRL satisfies require_crls."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import errors, load_private_key, sign
from imgsign.algorithms import HashMethod
from imgsign.glance.pipeline import verify_image
from imgsign.keymanager import CertificateStore
from tests.conftest import pki
from tests.test_chain import NOT_COMPLETE, scoped_crl
from tests.test_pipeline import der

DATA = os.urandom(256 * 1024 + 3)


class CrlStore(CertificateStore):
    """Certificates and CRLs in memory; ``crls=None`` behaves like an unreachable key manager."""

    description = "test store"

    def __init__(self, crls: list[bytes] | None) -> None:
        self.certificates = {stem: der(pki(stem + ".pem")) for stem in
                             ("leaf-revoked", "leaf-rsa-pss", "root-ca", "intermediate-ca")}
        self.crls = crls

    def get_certificate(self, cert_id: str) -> bytes:
        if cert_id not in self.certificates:
            raise errors.ObjectNotFound(f"no object {cert_id}")
        return self.certificates[cert_id]

    def get_crls(self) -> list[tuple[str, bytes]]:
        if self.crls is None:
            raise errors.KeyManagerError("test store: cannot list CRLs: cannot connect to the server")
        return [(f"crl-{i}", data) for i, data in enumerate(self.crls)]


def crl_der(stem: str) -> bytes:
    from imgsign.chain import load_crl

    return load_crl(pki(stem + ".crl.pem").read_bytes()).public_bytes(Encoding.DER)


def properties(stem: str) -> dict[str, str]:
    return sign([DATA], load_private_key(pki(stem + ".key").read_bytes()), stem, HashMethod.SHA256).as_dict()


TRUST = ("root-ca", "intermediate-ca")


def test_stored_crl_revokes():
    store = CrlStore([crl_der("intermediate-ca")])
    with pytest.raises(errors.CertificateRevoked):
        verify_image([DATA], properties("leaf-revoked"), store, trusted_ids=TRUST)


def test_unreachable_key_manager_refuses():
    with pytest.raises(errors.KeyManagerError):
        verify_image([DATA], properties("leaf-rsa-pss"), CrlStore(None), trusted_ids=TRUST)


@pytest.mark.parametrize("kind", list(NOT_COMPLETE))
def test_scoped_crl_does_not_satisfy_require_crls(kind):
    scoped = scoped_crl("intermediate-ca", extensions=NOT_COMPLETE[kind]).public_bytes(Encoding.DER)
    store = CrlStore([scoped, crl_der("root-ca")])
    with pytest.raises(errors.CertificateError, match="no complete certificate revocation list"):
        verify_image([DATA], properties("leaf-revoked"), store, trusted_ids=TRUST, require_crls=True)
    complete = CrlStore([scoped, crl_der("root-ca"), crl_der("intermediate-ca")])
    assert verify_image([DATA], properties("leaf-rsa-pss"), complete, trusted_ids=TRUST,
                        require_crls=True).chain
