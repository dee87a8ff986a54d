"""``imgsign audit`` against a real Glance 33 honours RFC 3161 timestamps and OCSP as `imgsign verify` does
(issue 22): with the flat options (``[imgsign] tsa_ca_file``) and under a trust policy (the rule's ``tsa``
store).  The TSA (``openssl ts``) and OCSP responder (``openssl ocsp``) are real, on 127.0.0.1; no CRL is
anywhere.  Deployment: tests/test_audit_e2e.py's (Keystone, an admin of ``demo`` auditing).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import time

import pytest

from imgsign import errors
from tests.conftest import assert_no_python_warning, pki
from tests.servers.ocsp import responder
from tests.evidence_pki import CA, CA_KEY, evidence_pki
from tests.servers.tsa import tsa
from tests.test_audit_e2e import _image
from tests.test_glance_client_e2e import Env
from tests.test_glance_e2e import USER

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

SHORT_LIFE = 20
TRUST = ("--trusted-file", pki("root-ca.pem"), "--intermediate", CA)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, keystone):
    """Images in project demo: signed by a short-lived signer with and without its timestamp (the signer has
    expired when the tests run), and by a signer its OCSP responder says is revoked."""
    root = tmp_path_factory.mktemp("audit-evidence")
    made = evidence_pki(root, SHORT_LIFE)
    port, tsa_key, tsa_cert, index = made.port, made.tsa_key, made.tsa_cert, made.index
    short, revoked = made.short, made.revoked
    data = root / "disk.raw"
    data.write_bytes(os.urandom(1024 * 1024 + 7))
    with contextlib.ExitStack() as stack:
        env = Env(root, root / "keystore.sqlite3", {}, stack, keystone, roles=("admin", "member"))

        def sign(signer, *args):
            proc = env.cli("bare", "sign", data, "--key", signer[0], "--cert", signer[1], "--store-cert", "-q", *args)
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout)

        tsa_url = stack.enter_context(tsa(tsa_key, tsa_cert, root / "tsa-run"))
        stack.enter_context(responder(index, CA, CA, CA_KEY, port))
        stamped, revoked_props = sign(short, "--tsa", tsa_url), sign(revoked)
        server = env.server("bare")
        bare = {k: v for k, v in stamped.items() if not k.startswith("imgsign_tst_v1")}
        ids = {"stamped": _image(server, USER, "stamped", data, after_upload=stamped),
               "bare": _image(server, USER, "bare", data, after_upload=bare),
               "revoked": _image(server, USER, "revoked", data, after_upload=revoked_props)}
        conf = root / "tsa.conf"
        conf.write_text(env.user_conf.read_text().replace("[imgsign]\n", f"[imgsign]\ntsa_ca_file = {pki('root-ca.pem')}\n"))
        left = (short_not_after(short) - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        time.sleep(max(0.0, left + 1.5))  # the short-lived signer has expired from here on

        def audit(*args: object, config=conf) -> dict:
            proc = subprocess.run([sys.executable, "-m", "imgsign", "-c", str(config), "audit", "--json",
                                   "--project", server.project_id(USER), *map(str, args)],
                                  capture_output=True, text=True, env=env.cli_env("bare"), timeout=300)
            assert "Traceback" not in proc.stderr, proc.stderr
            assert_no_python_warning(proc.stderr)
            assert proc.returncode in (0, errors.PolicyViolation.exit_code), proc.stderr
            names = {v: k for k, v in ids.items()}
            return {names[i["id"]]: i for i in json.loads(proc.stdout)["images"] if i["id"] in names}

        yield audit, root


def short_not_after(signer):
    from cryptography import x509

    return x509.load_pem_x509_certificate(signer[1].read_bytes()).not_valid_after_utc


def test_audit_with_the_flat_options(cloud):
    audit, _ = cloud
    images = audit(*TRUST)
    assert images["stamped"]["passed"], images["stamped"]
    assert not images["bare"]["passed"]
    assert "certificate-expired" in [f["reason"] for f in images["bare"]["failures"]], images["bare"]
    assert images["revoked"]["chain"]["status"] == "revoked" and not images["revoked"]["passed"], images["revoked"]
    assert "OCSP" in images["revoked"]["chain"]["error"]["message"]


def test_audit_under_a_policy_takes_the_rules_tsa_store(cloud):
    audit, root = cloud
    path = root / "policy.json"
    path.write_text(json.dumps({
        "version": 1,
        "trustStores": {"pki": {"certificates": [str(pki("root-ca.pem"))], "intermediates": [str(CA)]},
                        "tsa": {"type": "tsa", "certificates": [str(pki("root-ca.pem"))]}},
        "rules": [{"name": "all", "scope": "*", "level": "strict", "trustStores": ["pki", "tsa"],
                   "trustedIdentities": ["*"]}]}))
    images = audit("--policy", path)
    assert (images["stamped"]["passed"], images["stamped"]["verdict"]) == (True, "trusted"), images["stamped"]
    assert images["bare"]["verdict"] == "refused", images["bare"]
    assert images["revoked"]["verdict"] == "refused" and images["revoked"]["chain"]["status"] == "revoked"
