"""CastellanStore on a real Barbican: listings see every page, not castellan's first ten secrets.

castellan's Barbican driver lists one barbicanclient page (10 secrets), so ``cert list``, the
``--store-cert`` duplicate check (``find_certificate``) and the stored-CRL lookup (``get_crls``)
used to miss the 11th secret on.  Runs against the test harness's Barbican (``servers`` marker).
"""

from __future__ import annotations

import uuid

import pytest
from castellan import key_manager
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import errors
from imgsign.chain import TrustAnchors, load_crl, validate_chain
from imgsign.keymanager.castellan_store import CastellanStore
from tests.conftest import PKI, pki
from tests.test_chain import cert, scoped_crl
from tests.test_keymanager_conformance import _load_conf

pytestmark = pytest.mark.servers

#: Distinct certificates of the test PKI (more than two Barbican pages of castellan's 10).
*CERTIFICATES, UNSTORED = sorted(p for p in PKI.glob("*.pem") if not p.name.endswith(".crl.pem"))[:24]


@pytest.fixture
def store(barbican_server, tmp_path):
    manager = key_manager.API(_load_conf(tmp_path / "castellan.conf", barbican_server.castellan_config()))
    project = f"paging-{uuid.uuid4().hex[:10]}"
    return CastellanStore(manager, barbican_server.context(project), "barbican key manager (test)")


def der(path) -> bytes:
    from imgsign.certificates import load_certificate

    return load_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def test_every_certificate_is_listed_and_found(store):
    assert len(CERTIFICATES) == 23
    ids = [store.store_certificate(der(path), name=path.stem) for path in CERTIFICATES]
    listed = store.list_objects("certificate")
    assert sorted(item.id for item in listed) == sorted(ids)
    assert {item.name for item in listed} == {path.stem for path in CERTIFICATES}
    # the duplicate check finds the 11th and later certificates (base commit: None, so a duplicate was stored)
    for index in (10, 15, 22):
        assert store.find_certificate(der(CERTIFICATES[index])) == ids[index]
    assert store.find_certificate(der(UNSTORED)) is None


def test_every_crl_is_seen_and_the_last_one_revokes(store):
    """Base commit: get_crls failed closed (KeyManagerError) once ten opaque secrets existed."""
    other = [scoped_crl("intermediate-ca", revoke=[0x9000 + i]).public_bytes(Encoding.DER) for i in range(11)]
    ids = [store.store_crl(data, "CN=imgsign test intermediate-ca") for data in other]
    store.store_crl(load_crl(pki("intermediate-ca.crl.pem").read_bytes()).public_bytes(Encoding.DER),
                    "CN=imgsign test intermediate-ca")  # the 12th: the one that revokes leaf-revoked
    crls = store.get_crls()
    assert len(crls) == 12 and set(ids) < {crl_id for crl_id, _ in crls}
    assert {data for _, data in crls} >= set(other)
    anchors = TrustAnchors([cert("root-ca")], [cert("intermediate-ca")], [load_crl(d) for _, d in crls])
    with pytest.raises(errors.CertificateRevoked, match="leaf-revoked"):
        validate_chain(cert("leaf-revoked"), anchors)


def test_empty_project_lists_nothing(store):
    assert store.list_objects("certificate") == [] and store.get_crls() == []
    assert store.find_certificate(der(UNSTORED)) is None


def test_listing_while_secrets_are_deleted_never_skips_one(store, monkeypatch):
    """A second thread deletes the oldest secrets while pages of 3 are read: every listing either
    holds every secret that existed throughout, or is refused; never a silent gap."""
    import threading

    from imgsign.keymanager import castellan_store

    monkeypatch.setattr(castellan_store, "BARBICAN_PAGE_SIZE", 3)
    ids = [store.store_certificate(der(path), name=path.stem) for path in CERTIFICATES]
    doomed, survivors = ids[:8], set(ids[8:])
    done = threading.Event()

    def delete_oldest():
        for object_id in doomed:
            store.delete(object_id)
        done.set()

    deleter = threading.Thread(target=delete_oldest)
    deleter.start()
    outcomes = []
    while not done.is_set() or len(outcomes) < 2:
        try:
            listed = {item.id for item in store.list_objects("certificate")}
        except errors.KeyManagerError as exc:
            outcomes.append("refused")
            assert "kept changing" in exc.message
            continue
        assert survivors <= listed, f"skipped {survivors - listed}"
        outcomes.append("complete")
    deleter.join()
    assert outcomes[-1] == "complete" and {i.id for i in store.list_objects("certificate")} == survivors


def test_a_secret_private_to_another_user_is_passed_over_by_the_duplicate_check(barbican_server, tmp_path):
    """Another member of the project made a certificate secret private (ACL ``project-access: false``):
    the duplicate check (``--store-cert``, imgsign_resign's and the gateway's copy into a project) passes
    over it, even when it holds the very certificate sought, instead of failing on its 403 (base commit
    ddb8538: KeyManagerError "cannot list certificates", so no member could store a certificate any more).
    A CRL the listing cannot read stays an error: a CRL is never skipped."""
    import requests
    from oslo_context import context as oslo_context

    keystone = barbican_server.keystone
    manager = key_manager.API(_load_conf(tmp_path / "castellan.conf", barbican_server.castellan_config()))
    project = f"private-{uuid.uuid4().hex[:10]}"
    alice = CastellanStore(manager, barbican_server.context(project), "barbican (alice)")
    account = keystone.account(f"bob-of-{project}", project)
    bob_token = keystone.token(account.user)
    bob = CastellanStore(manager, oslo_context.RequestContext(auth_token=bob_token, project_id=account.project_id),
                         "barbican (bob)")

    def private(secret_id: str) -> None:
        response = requests.put(f"{barbican_server.url}/v1/secrets/{secret_id}/acl", timeout=30,
                                headers={"X-Auth-Token": bob_token}, json={"read": {"project-access": False}})
        assert response.status_code == 200, response.text

    sought, other = der(CERTIFICATES[0]), der(CERTIFICATES[1])
    hidden = bob.store_certificate(sought, name="bob's own")
    private(hidden)
    with pytest.raises(errors.KeyManagerError, match=r"(?i)forbidden"):
        alice.get_certificate(hidden)
    assert bob.find_certificate(sought) == hidden
    assert alice.find_certificate(sought) is None
    readable = alice.store_certificate(other)
    assert alice.find_certificate(other) == readable
    copy = alice.store_certificate(sought)
    assert alice.find_certificate(sought) == copy and copy != hidden

    private(bob.store_crl(load_crl(pki("intermediate-ca.crl.pem").read_bytes()).public_bytes(Encoding.DER),
                          "CN=imgsign test intermediate-ca"))
    with pytest.raises(errors.KeyManagerError, match=r"(?i)forbidden"):
        alice.get_crls()
