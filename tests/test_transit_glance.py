"""Glance's ``imgsign_resign`` with a service key that never leaves OpenBao transit.

A real Glance 33 (tests/servers/glance.py) and a real OpenBao (tests/servers/openbao.py):
``[imgsign_import] service_key = hashivault://glance-resign`` and
``[imgsign_transit] address``/``token_file`` in ``glance-image-import.conf``. A signed qcow2
import is verified, converted to raw and re-signed through transit; the result verifies with
``imgsign verify``, and the token is nowhere in Glance's logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import keygen
from imgsign.algorithms import KeyType
from imgsign.keys import transit
from tests.test_transit import _intermediate_ca
from tests.conftest import pki, run_cli
from tests.servers import openbao
from tests.servers.glance import glance_server
from tests.test_glance_e2e import API, SERVICE, USER, Deployment, _conf, _stored_id, make_qcow2, sign

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def setup(tmp_path_factory, keystone) -> Iterator[tuple[Deployment, API, str]]:
    root = tmp_path_factory.mktemp("transit-glance")
    with openbao.openbao_server(root / "openbao") as bao:
        bao.api("POST", "sys/mounts/transit", {"type": "transit"})
        bao.api("PUT", "sys/policies/acl/glance-resign",
                {"policy": 'path "transit/keys/glance-resign" { capabilities = ["read"] }\n'
                           'path "transit/sign/glance-resign/*" { capabilities = ["update"] }'})
        token = bao.api("POST", "auth/token/create", {"policies": ["glance-resign"], "ttl": "2h"})["auth"][
            "client_token"]
        token_file = root / "glance-token"
        token_file.write_text(token + "\n")
        key = transit.generate_key("hashivault://glance-resign", KeyType.RSA_PSS, 3072,
                                   transit.settings(None, {"VAULT_ADDR": bao.url, "VAULT_TOKEN": bao.root_token}))
        certificate = root / "glance-resign.pem"
        certificate.write_bytes(keygen.issue_certificate(
            keygen.parse_subject("CN=glance re-signing (transit)"), key.public_key(),
            _intermediate_ca()).public_bytes(Encoding.PEM))
        keystore = root / "keystore.sqlite3"
        user_project_id = keystone.project_user(USER).project_id
        service_project_id = keystone.project_user(SERVICE).project_id
        service_conf = _conf(root / "service.conf", keystore, service_project_id)
        deployment = Deployment(root, keystore, _conf(root / "user.conf", keystore, user_project_id),
                                service_key_id="",
                                service_cert_id=_stored_id("-c", service_conf, "cert", "store", certificate),
                                trusted_ca_id=_stored_id("-c", service_conf, "cert", "store",
                                                         pki("intermediate-ca.pem")),
                                user_project_id=user_project_id, service_project_id=service_project_id)
        options = {
            "image_conversion": {"output_format": "raw"},
            "imgsign_import": {"trusted_certificate_ids": deployment.trusted_ca_id,
                               "service_key": "hashivault://glance-resign",
                               "service_certificate_id": deployment.service_cert_id, "service_project_id": service_project_id},
            "imgsign_transit": {"address": bao.url, "token_file": str(token_file), "timeout": "20"},
        }
        with glance_server(root / "glance", keystone=keystone, keystore=keystore, import_options=options,
                           plugins=["imgsign_verify", "image_conversion", "imgsign_resign"]) as glance:
            yield deployment, API(glance), token


def test_import_is_resigned_through_transit(setup, tmp_path: Path) -> None:
    deployment, api, token = setup
    image = make_qcow2(tmp_path / "disk.qcow2")
    original = sign(deployment, image)
    image_id, task = api.import_image(image, original)
    assert task["status"] == "success", task
    shown = api.show(image_id)
    assert shown["status"] == "active" and shown["disk_format"] == "raw", shown
    assert shown["img_signature_key_type"] == "RSA-PSS" and shown["img_signature"] != original["img_signature"]
    raw = api.download(image_id, tmp_path / "downloaded.raw")
    document = tmp_path / "image.json"
    document.write_text(json.dumps(shown))
    verified = run_cli("-c", deployment.user_conf, "verify", raw, "--properties", document, "--json", "-q")
    assert verified.code == 0, verified
    assert "glance re-signing (transit)" in json.dumps(verified.json())
    log = api.server.glance_log_text()
    assert f"imgsign_resign: image {image_id} re-signed" in log
    assert token not in log
