"""The gateway's key-manager calls against a real Barbican behind the real Keystone, with Nova's user token.

glance-api 33 (tests/servers/glance.py) uses Barbican as its key manager and calls it with the
uploader's token, as most clouds run it; the gateway's imgsign.conf is Barbican's castellan
configuration with no credentials of its own: it can only act with the token Nova sends.  The
snapshots are uploaded by Nova 34's own code (``nova.image.glance``), so the gateway receives Nova's
user token exactly as nova-compute sends it.

Expected: the host certificate is copied into the image owner's project when the host first signs
for it, is readable there with that project's users' tokens (as Glance's check at import and Nova's
at boot read it), is reused by the next snapshot (one copy, not one per snapshot), and a user of
another project cannot read it.  The base image's certificate is read as the owner reads it.

The libvirt lookup is :class:`tests.test_gateway_signing.FakeDomains` (a stand-in: instances of chosen
projects "on this host" without booting guests; tests/test_gateway_libvirt.py checks the real lookup).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import HashMethod, Signer, errors, load_certificate, load_private_key
from imgsign.gateway.config import GatewayConfig, SigningConfig
from imgsign.gateway.host_key import HOST_CERTIFICATE_NAME
from imgsign.gateway.intercept import DomainInfo
from imgsign.provenance import verify_provenance
from imgsign.keymanager.castellan_store import CastellanStore
from imgsign.keymanager.config import load
from tests.conftest import cert_of, key_of
from tests.servers.glance import GlanceServer, glance_server
from tests.servers.nova import upload_snapshot
from tests.test_gateway_signing import FakeDomains, running

pytest.importorskip("aiohttp")
pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

OWNER = "gw-barbican-owner"
OTHER = "gw-barbican-other"
OPERATOR = "gw-barbican-operator"
HOST_KEY_TYPE = "ECC_SECP384R1"
BASE_KEY_TYPE = "RSA-PSS"
INSTANCE = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"


def _der(key_type: str) -> bytes:
    return load_certificate(cert_of(key_type).read_bytes()).public_bytes(Encoding.DER)


class Cloud:
    def __init__(self, root: Path, keystone, barbican, glance: GlanceServer) -> None:
        self.root, self.keystone, self.barbican, self.glance = root, keystone, barbican, glance
        self.conf = root / "imgsign.conf"
        self.conf.write_text(barbican.castellan_config())
        self.owner = keystone.project_user(OWNER)
        # A second member of the owner's project: Nova's boot check reads as whoever boots the snapshot.
        self.colleague = keystone.account(f"colleague-of-{OWNER}", OWNER)
        self.other = keystone.project_user(OTHER)

    def store(self, user: str, project_id: str) -> CastellanStore:
        """The key manager as ``user`` sees it: castellan with that user's token and project, as Glance and
        Nova call it for a request of that user."""
        from castellan import key_manager
        from oslo_context import context as oslo_context

        context = oslo_context.RequestContext(auth_token=self.keystone.token(user), project_id=project_id)
        return CastellanStore(key_manager.API(load(str(self.conf))), context, f"Barbican as {user}")

    def headers(self, user: str) -> dict[str, str]:
        return {"X-Auth-Token": self.keystone.token(user)}

    def certificates(self, user: str) -> list[dict]:
        """The certificate secrets ``user`` lists in its project (Barbican's REST API, every page)."""
        response = requests.get(f"{self.barbican.url}/v1/secrets", timeout=30, headers={
            **self.headers(user), "Accept": "application/json"}, params={"secret_type": "certificate", "limit": 100})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["secrets"]), body
        return list(body["secrets"])

    def create(self, user: str, **properties: str) -> str:
        response = requests.post(f"{self.glance.url}/v2/images", headers=self.headers(user), timeout=60,
                                 json={"name": "image", "disk_format": "raw", "container_format": "bare",
                                       **properties})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def image(self, user: str, image_id: str) -> dict:
        response = requests.get(f"{self.glance.url}/v2/images/{image_id}", headers=self.headers(user), timeout=60)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def signed_base(self, user: str, project_id: str, key_type: str, **properties: str) -> str:
        """A base image signed by ``user``, its certificate stored in its project; Glance checks it at upload."""
        certificate_id = self.store(user, project_id).store_certificate(_der(key_type), name="base signer")
        data = f"base image of {user} ".encode() * 5000
        signed = Signer(load_private_key(key_of(key_type).read_bytes()), certificate_id,
                        HashMethod.SHA256).sign(iter([data]))
        image_id = self.create(user, **signed.as_dict(), **properties)
        response = requests.put(f"{self.glance.url}/v2/images/{image_id}/file", data=data, timeout=60,
                                headers={**self.headers(user), "Content-Type": "application/octet-stream"})
        assert response.status_code == 204, response.text
        return image_id

    def nova_snapshot(self, gateway_url: str, base_id: str, data: bytes, tmp_path: Path) -> tuple[str, str]:
        """A snapshot image made as nova-api does, its data uploaded by Nova's own code through the gateway:
        (image id, Nova's error output)."""
        image_id = self.create(self.owner.user, image_type="snapshot", instance_uuid=INSTANCE,
                               base_image_ref=base_id)
        path = tmp_path / f"{image_id}.raw"
        path.write_bytes(data)
        result = upload_snapshot(tmp_path / f"nova-{image_id}", glance_url=gateway_url,
                                 token=self.keystone.token(self.owner.user), project_id=self.owner.project_id,
                                 image_id=image_id, data=path)
        return image_id, "" if result.returncode == 0 else result.stderr[-3000:]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, keystone, barbican_server) -> Iterator[Cloud]:
    root = tmp_path_factory.mktemp("gateway-barbican")
    with glance_server(root / "glance", keystone=keystone, keystore=root / "unused.sqlite3",
                       key_manager=barbican_server.castellan_config()) as glance:
        yield Cloud(root, keystone, barbican_server, glance)


@pytest.fixture(scope="module")
def gateway(cloud: Cloud) -> Iterator[str]:
    from imgsign.gateway.host_key import CastellanProjects, HostSigner
    from imgsign.gateway.server import Gateway

    conf = load(str(cloud.conf))
    signing = SigningConfig(key=str(key_of(HOST_KEY_TYPE)), certificate=str(cert_of(HOST_KEY_TYPE)),
                            host="compute-barbican", import_timeout=120)
    domains = FakeDomains({INSTANCE: DomainInfo(INSTANCE, "running", cloud.owner.project_id)})
    signer = HostSigner(signing, conf)
    with running(Gateway(GatewayConfig(glance_url=cloud.glance.url), signer=signer, domains=domains,
                         keys=CastellanProjects(conf))) as url:
        yield url


def _host_copies(cloud: Cloud, user: str) -> list[str]:
    """The ids of the secrets named as the gateway names its copy, in ``user``'s project."""
    return [s["secret_ref"].rsplit("/", 1)[1] for s in cloud.certificates(user) if s["name"] == HOST_CERTIFICATE_NAME]


def _host_public():
    from imgsign.certificates import certificate_public_key

    certificate = load_certificate(cert_of(HOST_KEY_TYPE).read_bytes())
    return certificate_public_key(certificate), hashlib.sha256(_der(HOST_KEY_TYPE)).digest()


def test_the_host_certificate_is_copied_once_into_the_owner_s_project(cloud, gateway, tmp_path) -> None:
    owner, colleague, other = cloud.owner, cloud.colleague, cloud.other
    base_id = cloud.signed_base(owner.user, owner.project_id, BASE_KEY_TYPE)
    before = _host_copies(cloud, owner.user)  # [] unless another test of this module snapshotted first

    first, error = cloud.nova_snapshot(gateway, base_id, b"first snapshot " * 60000, tmp_path)
    assert not error, error
    image = cloud.image(owner.user, first)
    assert image["status"] == "active" and image["img_signature_key_type"] == HOST_KEY_TYPE
    # Glance's own check read the copy from Barbican with the uploader's token at import.
    assert f"Successfully verified signature for image {first}" in cloud.glance.glance_log_text()
    copy_id = image["img_signature_certificate_uuid"]

    # The copy is a secret of the owner's project, readable with the tokens of that project's users.
    for user in (owner.user, colleague.user):
        assert cloud.store(user, owner.project_id).get_certificate(copy_id) == _der(HOST_KEY_TYPE)
    assert _host_copies(cloud, owner.user) == [copy_id] and before in ([], [copy_id])

    # A user of another project cannot read it (castellan as Nova would call it, and Barbican's API).
    with pytest.raises(errors.KeyManagerError, match=r"(?i)forbidden"):
        cloud.store(other.user, other.project_id).get_certificate(copy_id)
    response = requests.get(f"{cloud.barbican.url}/v1/secrets/{copy_id}", timeout=30,
                            headers={**cloud.headers(other.user), "Accept": "application/json"})
    assert response.status_code == 403, response.text
    assert _host_copies(cloud, other.user) == []

    # The provenance names the base by its certificate, read from Barbican as the owner reads it.
    public, fingerprint = _host_public()
    provenance = verify_provenance(image, public, fingerprint, image_id=first)
    assert provenance.project_id == owner.project_id
    assert provenance.base is not None and provenance.base.image_id == base_id
    assert provenance.base.certificate_sha256 == hashlib.sha256(_der(BASE_KEY_TYPE)).digest()

    # The next snapshot reuses the copy: still one host certificate in the project.
    second, error = cloud.nova_snapshot(gateway, base_id, b"second snapshot " * 50000, tmp_path)
    assert not error, error
    assert cloud.image(owner.user, second)["img_signature_certificate_uuid"] == copy_id
    assert _host_copies(cloud, owner.user) == [copy_id]



def test_a_base_whose_certificate_the_owner_cannot_read_is_stated_as_unsigned(cloud, gateway, tmp_path,
                                                                              caplog) -> None:
    """A community base signed by another project (its certificate a secret there): the snapshot is signed
    and names no base, so that a rule requiring a trusted base refuses it.  On main (ddb8538) every snapshot
    of such an instance failed (502), and with ``upload_image`` denied for snapshots it could not be made."""
    operator = cloud.keystone.project_user(OPERATOR)
    base_id = cloud.signed_base(operator.user, operator.project_id, BASE_KEY_TYPE, visibility="community")
    base_certificate = cloud.image(operator.user, base_id)["img_signature_certificate_uuid"]
    with pytest.raises(errors.KeyManagerError, match=r"(?i)forbidden"):
        cloud.store(cloud.owner.user, cloud.owner.project_id).get_certificate(base_certificate)

    image_id, error = cloud.nova_snapshot(gateway, base_id, b"snapshot of a community base " * 30000, tmp_path)
    assert not error, error
    image = cloud.image(cloud.owner.user, image_id)
    assert image["status"] == "active" and image["img_signature_key_type"] == HOST_KEY_TYPE
    public, fingerprint = _host_public()
    provenance = verify_provenance(image, public, fingerprint, image_id=image_id)
    assert provenance.base is None and provenance.instance_uuid == INSTANCE
    assert f"base image {base_id}: its certificate {base_certificate} cannot be read" in caplog.text


def test_a_certificate_private_to_another_member_does_not_stop_snapshots(cloud, gateway, tmp_path) -> None:
    """A member of the project keeps a certificate secret private (Barbican ACL ``project-access: false``),
    here even the host certificate itself: the owner's look-up for the copy passes over what it may not
    read.  On main (ddb8538) the look-up failed on it (403), and so did every snapshot of the project."""
    owner, colleague = cloud.owner, cloud.colleague
    private = cloud.store(colleague.user, owner.project_id).store_certificate(_der(HOST_KEY_TYPE), name="mine")
    response = requests.put(f"{cloud.barbican.url}/v1/secrets/{private}/acl", timeout=30,
                            headers=cloud.headers(colleague.user), json={"read": {"project-access": False}})
    assert response.status_code == 200, response.text
    with pytest.raises(errors.KeyManagerError, match=r"(?i)forbidden"):
        cloud.store(owner.user, owner.project_id).get_certificate(private)

    base_id = cloud.signed_base(owner.user, owner.project_id, BASE_KEY_TYPE)
    image_id, error = cloud.nova_snapshot(gateway, base_id, b"snapshot beside a private secret " * 30000, tmp_path)
    assert not error, error
    image = cloud.image(owner.user, image_id)
    assert image["status"] == "active"
    copy_id = image["img_signature_certificate_uuid"]
    assert copy_id != private
    assert cloud.store(owner.user, owner.project_id).get_certificate(copy_id) == _der(HOST_KEY_TYPE)
    assert cloud.store(colleague.user, owner.project_id).get_certificate(copy_id) == _der(HOST_KEY_TYPE)
