"""The Glance import plugin (``imgsign_verify``, in a real Glance 33: tests/servers/glance.py) honours RFC 3161
timestamps and OCSP as `imgsign verify` does (issue 22): with the flat options (``[imgsign_import]
tsa_ca_file``, the built-in policy's TSA store) and under a trust policy (the rule's ``tsa`` store).

The TSA (``openssl ts``) and the OCSP responder (``openssl ocsp``) are real, on 127.0.0.1, asked by the
Glance process itself; no CRL is stored in the key manager.  Deployment (Keystone, key manager, projects):
tests/test_glance_e2e.py's.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import time

import pytest
from cryptography import x509

from imgsign import ocsp
from tests.conftest import pki, run_cli
from tests.servers.glance import glance_server
from tests.servers.ocsp import responder
from tests.evidence_pki import CA, CA_KEY, evidence_pki
from tests.servers.tsa import tsa
from tests.test_glance_e2e import API, assert_refused_before_any_store, deployment, make_qcow2  # noqa: F401

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

SHORT_LIFE = 20


@pytest.fixture(scope="module")
def world(tmp_path_factory, deployment):  # noqa: F811 - the fixture imported above
    """Signers under the intermediate CA (the deployment's trusted CA), their certificates in project demo:
    a short-lived one timestamped while valid, one revoked per OCSP, one with a stapled good response."""
    work = tmp_path_factory.mktemp("glance-evidence")
    made = evidence_pki(work, SHORT_LIFE, good_name="ocsp-stapled")
    port, tsa_key, tsa_cert, index = made.port, made.tsa_key, made.tsa_cert, made.index
    short, revoked, stapled = made.short, made.revoked, made.good
    image = make_qcow2(work / "disk.qcow2")

    def sign(signer, *args):
        key, cert = signer
        signed = run_cli("-c", deployment.user_conf, "sign", image, "--key", key, "--cert", cert, "--store-cert",
                         "-q", *args)
        assert signed.code == 0, signed
        return signed.json()

    with tsa(tsa_key, tsa_cert, work / "tsa-run") as tsa_url, responder(index, CA, CA, CA_KEY, port):
        world = {"work": work, "image": image, "short": sign(short, "--tsa", tsa_url), "revoked": sign(revoked),
                 "stapled": sign(stapled, "--ocsp-staple", CA), "short_not_after": x509.load_pem_x509_certificate(
                     short[1].read_bytes()).not_valid_after_utc}
        yield world


def _policy(deployment, world) -> str:  # noqa: F811
    path = world["work"] / "policy.json"
    path.write_text(json.dumps({
        "version": 1,
        "trustStores": {"ca": {"keyManager": [deployment.trusted_ca_id]},
                        "tsa": {"type": "tsa", "certificates": [str(pki("root-ca.pem"))]}},
        "rules": [{"name": "all", "scope": "*", "level": "strict", "trustStores": ["ca", "tsa"],
                   "trustedIdentities": ["*"]}]}))
    return str(path)


@pytest.fixture(scope="module")
def servers(world, deployment, keystone):  # noqa: F811
    """Glance with imgsign_verify: ``flat`` (trusted_certificate_ids, tsa_ca_file) and ``policy`` (a policy file)."""
    common = {"service_project_id": deployment.service_project_id}
    settings = {
        "flat": {"trusted_certificate_ids": deployment.trusted_ca_id, "tsa_ca_file": str(pki("root-ca.pem")),
                 **common},
        "policy": {"policy_file": _policy(deployment, world), **common},
    }
    with contextlib.ExitStack() as stack:
        running = {name: stack.enter_context(glance_server(
            deployment.root / f"glance-evidence-{name}", keystone=keystone, keystore=deployment.keystore,
            plugins=["imgsign_verify"], import_options={"imgsign_import": options}))
            for name, options in settings.items()}
        left = (world["short_not_after"] - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        time.sleep(max(0.0, left + 1.5))  # the short-lived signer has expired from here on
        yield running


def without(props: dict, prefix: str) -> dict:
    return {k: v for k, v in props.items() if not k.startswith(prefix)}


@pytest.mark.parametrize("name", ["flat", "policy"])
def test_expired_signer_timestamped_while_valid_is_imported_and_without_the_stamp_refused(servers, world, name):
    server = servers[name]
    api = API(server)
    image_id, task = api.import_image(world["image"], world["short"])
    assert task["status"] == "success", task
    assert api.show(image_id)["status"] == "active"
    assert f"imgsign_verify: image {image_id}: signature by" in server.glance_log_text()
    bare_id, bare = api.import_image(world["image"], without(world["short"], "imgsign_tst_v1"))
    assert_refused_before_any_store(server, api, bare_id, bare,
                                    f"imgsign_verify refused image {bare_id}: untrusted-certificate:")


@pytest.mark.parametrize("name", ["flat", "policy"])
def test_signer_revoked_per_ocsp_is_refused_with_no_crl(servers, world, name):
    server = servers[name]
    api = API(server)
    image_id, task = api.import_image(world["image"], world["revoked"])
    assert_refused_before_any_store(server, api, image_id, task,
                                    f"imgsign_verify refused image {image_id}: certificate-revoked:")
    assert "OCSP" in task["message"]
    good_id, good = api.import_image(world["image"], world["stapled"])
    assert good["status"] == "success", good
    assert any(k.startswith(ocsp.PROPERTY) for k in api.show(good_id))
