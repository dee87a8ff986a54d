"""The boot hook's self-adoption (a base Nova 34 downloaded from a real Glance 33, the hook adopting it at the
first boot: tests/test_hook_self_adoption.py's deployment) honours RFC 3161 timestamps against the trust
policy's ``tsa`` stores, and the OCSP response stapled with the signature on a host that asks no responder
(``[imgsign] ocsp = offline`` in boot.conf), as every other verification point does (issue 22).

The TSA (``openssl ts``) and OCSP responder (``openssl ocsp``) are real, on 127.0.0.1, and only asked at
signing time; no CRL is anywhere.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import time
import uuid

import pytest
from cryptography import x509

from imgsign import errors, ocsp
from imgsign._internal import ocsp_client
from tests.conftest import pki, run_cli
from tests.servers.ocsp import responder
from tests.evidence_pki import CA, CA_KEY, evidence_pki
from tests.servers.tsa import tsa
from tests.test_hook_self_adoption import Compute, cloud, compute  # noqa: F401 - fixtures
from tests.test_real_images import qemu

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

SHORT_LIFE = 25


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def images(tmp_path_factory, cloud):  # noqa: F811
    """Raw images in Glance (uploaded while their signers were valid: Glance checks the signature itself):
    ``stamped`` and ``bare`` (its token removed) by a short-lived signer that has expired when the tests run;
    ``revoked`` (a stapled "revoked" answer) and ``good`` (a stapled "good" one) by signers naming a responder."""
    work = tmp_path_factory.mktemp("hook-evidence")
    made = evidence_pki(work, SHORT_LIFE)
    port, tsa_key, tsa_cert, index = made.port, made.tsa_key, made.tsa_cert, made.index
    short, revoked, good = made.short, made.revoked, made.good
    path = work / "disk.raw"
    qemu("qemu-img", "create", "-q", "-f", "raw", path, "16M")
    qemu("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 2M", path)

    def sign(signer, *args):
        signed = run_cli("-c", cloud.user_conf, "sign", path, "--key", signer[0], "--cert", signer[1],
                         "--store-cert", "-q", *args)
        assert signed.code == 0, signed
        return signed.json()

    with tsa(tsa_key, tsa_cert, work / "tsa-run") as tsa_url, responder(index, CA, CA, CA_KEY, port):
        stamped = sign(short, "--tsa", tsa_url)
        answer, result = ocsp_client.fetch(load(revoked[1]), load(CA))
        assert result.status == "revoked"
        props = {"stamped": stamped, "bare": {k: v for k, v in stamped.items() if not k.startswith("imgsign_tst")},
                 "revoked": {**sign(revoked), **ocsp.properties(answer)}, "good": sign(good, "--ocsp-staple", CA)}
    ids = {name: cloud.image(path, "raw", p) for name, p in props.items()}
    left = (load(short[1]).not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    time.sleep(max(0.0, left + 1.5))  # the short-lived signer has expired from here on
    return ids


def _policy(compute: Compute, *, tsa_store: bool) -> str:
    """A catch-all strict policy over the intermediate CA (and the TSA's root), in root's own files."""
    directory = compute.tmp / f"policy-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o755)
    shutil.copyfile(CA, directory / "ca.pem")
    stores = {"ca": {"certificates": ["ca.pem"]}}
    if tsa_store:
        shutil.copyfile(pki("root-ca.pem"), directory / "tsa.pem")
        stores["tsa"] = {"type": "tsa", "certificates": ["tsa.pem"]}
    path = directory / "policy.json"
    path.write_text(json.dumps({"version": 1, "trustStores": stores, "rules": [
        {"name": "all", "scope": "*", "level": "strict", "trustStores": sorted(stores), "trustedIdentities": ["*"]}]}))
    os.chmod(path, 0o644)
    return str(path)


def test_hook_adopts_an_expired_signer_timestamped_while_valid_by_the_policys_tsa_store(compute, images):  # noqa: F811
    compute.configure(trusted="", boot_extra=f"policy_file = {_policy(compute, tsa_store=True)}\n")
    compute.nova_download(images["stamped"])
    booted = compute.boot_image(images["stamped"])
    assert booted.returncode == 0, booted.stderr
    assert compute.log_entries()[0]["reason"] == "adopted"
    record = compute.record(images["stamped"])
    assert record is not None and record.checks is not None and record.checks.judged_at is not None
    compute.nova_download(images["bare"])
    bare = compute.boot_image(images["bare"])
    assert bare.returncode == errors.UntrustedCertificate.exit_code, bare.stderr
    assert compute.record(images["bare"]) is None


def test_hook_without_the_tsa_store_refuses_the_expired_signer(compute, images):  # noqa: F811
    compute.configure(trusted="", boot_extra=f"policy_file = {_policy(compute, tsa_store=False)}\n")
    compute.nova_download(images["stamped"])
    refused = compute.boot_image(images["stamped"])
    assert refused.returncode == errors.UntrustedCertificate.exit_code, refused.stderr
    assert compute.record(images["stamped"]) is None


def test_an_air_gapped_hook_checks_revocation_from_the_stapled_response(compute, images):  # noqa: F811
    """The responder is gone and boot.conf says ``ocsp = offline``: the stapled answers decide, no CRL."""
    compute.config.write_text(compute.config.read_text() + "ocsp = offline\n")  # the [imgsign] section is last
    compute.nova_download(images["revoked"])
    refused = compute.boot_image(images["revoked"])
    assert refused.returncode == errors.CertificateRevoked.exit_code, refused.stderr
    assert "OCSP" in refused.stderr and compute.record(images["revoked"]) is None
    compute.nova_download(images["good"])
    booted = compute.boot_image(images["good"])
    assert booted.returncode == 0, booted.stderr
    record = compute.record(images["good"])
    assert record is not None and record.checks is not None
    assert [(a["status"], a["source"]) for a in record.checks.ocsp_dicts()] == [("good", "stored")]
