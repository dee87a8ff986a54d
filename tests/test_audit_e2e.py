"""``imgsign audit`` against a real Glance 33 (tests/servers/glance.py), one server for the module.

Project ``demo`` holds a mix: a valid signed image, an unsigned one, one signed with an expired
certificate, one whose signer chains to an untrusted root, and one whose data is replaced in the
file store behind Glance's back after a valid upload (only ``--download`` can see that). Project
``other`` holds one unsigned image. imgsign authenticates as in tests/test_glance_client_e2e.py:
a clouds.yaml with keystoneauth's ``password`` plugin against the session's real Keystone, as an
admin of ``demo`` (an auditor: Glance shows an admin every project's images; the deployment is that
module's ``Env``). ``--project`` takes the Keystone project *id*, which is what Glance records as the
image's owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from imgsign import errors
from tests.conftest import assert_no_python_warning, pki
from tests.servers.glance import GlanceServer
from tests.test_glance_client_e2e import Env
from tests.test_glance_e2e import USER

pytestmark = pytest.mark.servers
if sys.version_info < (3, 11):
    pytest.skip("Glance 33 needs Python 3.11 or later", allow_module_level=True)

OTHER = "other"
SIZE = 3 * 1024 * 1024 + 4097
TRUST = ("--trusted-file", pki("root-ca.pem"), "--intermediate", pki("intermediate-ca.pem"))


@dataclass
class Cloud:
    env: Env
    server: GlanceServer
    #: image id per kind: valid, unsigned, expired, untrusted, tampered, other
    ids: dict[str, str]

    def audit(self, *args: object, cloud: str = "bare") -> subprocess.CompletedProcess[str]:
        return self.env.cli(cloud, "audit", *args)

    def project(self, name: str) -> str:
        """The Keystone id of project ``name``: the owner Glance records."""
        return self.server.project_id(name)


def _sign(env: Env, image: Path, stem: str) -> dict[str, str]:
    """The properties of ``image`` signed by the test PKI's ``stem`` (dates ignored: the expired one too),
    its certificate stored in the user's project."""
    proc = env.cli("bare", "sign", image, "--key", pki(stem + ".key"), "--cert", pki(stem + ".pem"),
                   "--store-cert", "--ignore-cert-dates", "-q")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _image(server: GlanceServer, project: str, name: str, data: Path, properties: dict[str, str] | None = None,
           *, after_upload: dict[str, str] | None = None) -> str:
    """Create an image in ``project`` and upload ``data`` (Glance checks ``properties``' signature itself);
    ``after_upload`` properties are added to the active image, where Glance checks nothing."""
    headers = server.headers(project)
    body = {"name": name, "disk_format": "raw", "container_format": "bare", **(properties or {})}
    created = requests.post(f"{server.url}/v2/images", json=body, headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    with open(data, "rb") as handle:
        uploaded = requests.put(f"{server.url}/v2/images/{image_id}/file", data=handle, timeout=60,
                                headers={**headers, "Content-Type": "application/octet-stream"})
    assert uploaded.status_code == 204, uploaded.text
    if after_upload:
        patch = [{"op": "add", "path": f"/{k}", "value": v} for k, v in after_upload.items()]
        patched = requests.patch(f"{server.url}/v2/images/{image_id}", data=json.dumps(patch), timeout=30,
                                 headers={**headers, "Content-Type": "application/openstack-images-v2.1-json-patch"})
        assert patched.status_code == 200, patched.text
    return image_id


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, keystone) -> Cloud:
    """test_glance_client_e2e's deployment (keystore, user's imgsign.conf, clouds.yaml with the token),
    with its plain Glance only: no import plugins, uploads with PUT /file."""
    root = tmp_path_factory.mktemp("audit")
    with contextlib.ExitStack() as stack:
        env = Env(root, root / "keystore.sqlite3", {}, stack, keystone, roles=("admin", "member"))
        data = root / "disk.raw"
        data.write_bytes(os.urandom(SIZE))
        signed = {stem: _sign(env, data, stem)
                  for stem in ("leaf-rsa-pss", "leaf-expired", "leaf-untrusted", "leaf-ecc-secp384r1")}
        server = env.server("bare")
        ids = {
            "valid": _image(server, USER, "valid", data, signed["leaf-rsa-pss"]),
            "unsigned": _image(server, USER, "unsigned", data),
            # Glance's own check refuses an expired signer at upload: the properties come afterwards.
            "expired": _image(server, USER, "expired", data, after_upload=signed["leaf-expired"]),
            "untrusted": _image(server, USER, "untrusted", data, signed["leaf-untrusted"]),
            "tampered": _image(server, USER, "tampered", data, signed["leaf-ecc-secp384r1"]),
            "other": _image(server, OTHER, "other", data),
        }
        stored = server.images_dir / ids["tampered"]
        assert stored.stat().st_size == SIZE
        with open(stored, "r+b") as handle:  # behind Glance's back: same size, one byte changed
            handle.seek(1024 * 1024)
            byte = handle.read(1)
            handle.seek(1024 * 1024)
            handle.write(bytes([byte[0] ^ 0x01]))
        yield Cloud(env, server, ids)


def _by_kind(cloud: Cloud, document: dict) -> dict[str, dict]:
    names = {v: k for k, v in cloud.ids.items()}
    return {names[image["id"]]: image for image in document["images"] if image["id"] in names}


def _reasons(image: dict) -> list[str]:
    return [failure["reason"] for failure in image["failures"]]


def test_audit_without_download(cloud):
    proc = cloud.audit("--project", cloud.project(USER), "--json", *TRUST)
    assert proc.returncode == errors.PolicyViolation.exit_code, proc.stderr
    assert "imgsign: error: 3 of 5 image(s) fail the audit" in proc.stderr
    document = json.loads(proc.stdout)
    assert document["project"] == cloud.project(USER) and document["download"] is False
    assert document["expiry_days"] == 30
    assert document["summary"] == {"images": 5, "passed": 2, "failed": 3, "unsigned": 1, "expiring": 0,
                                   "data_invalid": 0}
    images = _by_kind(cloud, document)
    assert set(images) == {"valid", "unsigned", "expired", "untrusted", "tampered"}
    valid = images["valid"]
    assert valid["passed"] and valid["key_type"] == "RSA-PSS" and valid["hash_method"] == "SHA-256"
    assert valid["certificate"]["common_name"] == "imgsign test leaf-rsa-pss"
    assert valid["certificate"]["not_after"] == "2075-01-01T00:00:00Z" and not valid["certificate"]["expires_soon"]
    assert valid["chain"]["status"] == "trusted" and len(valid["chain"]["path"]) == 3
    assert valid["data"]["status"] == "not-checked" and valid["status"] == "active"
    assert valid["owner"] == cloud.project(USER)
    assert _reasons(images["unsigned"]) == ["unsigned-image"] and not images["unsigned"]["signed"]
    expired = images["expired"]
    assert "certificate-expired" in _reasons(expired) and expired["certificate"]["days_left"] < 0
    assert expired["chain"]["status"] == "untrusted"
    assert _reasons(images["untrusted"]) == ["untrusted-certificate"]
    assert images["untrusted"]["failures"][0]["exit_code"] == errors.UntrustedCertificate.exit_code
    assert images["tampered"]["passed"]  # nothing but the data is wrong: only --download can tell


def test_download_finds_the_tampered_image(cloud):
    proc = cloud.audit("--project", cloud.project(USER), "--json", "--download", "--jobs", "2", *TRUST)
    assert proc.returncode == errors.PolicyViolation.exit_code, proc.stderr
    document = json.loads(proc.stdout)
    images = _by_kind(cloud, document)
    assert document["summary"]["failed"] == 4 and document["summary"]["data_invalid"] == 1
    tampered = images["tampered"]
    assert tampered["data"]["status"] == "invalid" and _reasons(tampered) == ["invalid-signature"]
    assert tampered["failures"][0]["exit_code"] == errors.InvalidSignature.exit_code
    assert images["valid"]["passed"] and images["valid"]["data"] == {"status": "verified", "size": SIZE,
                                                                     "error": None}
    assert images["expired"]["data"]["status"] == "verified"  # intact data; the signer is what fails
    assert images["unsigned"]["data"]["status"] == "skipped"


def test_every_visible_image_and_a_table(cloud):
    proc = cloud.audit("--expiry-days", "20000", *TRUST)  # leaf-rsa-pss (notAfter 2075) expires "soon"
    assert proc.returncode == errors.PolicyViolation.exit_code, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "SIGNER", "NOT", "AFTER", "CHAIN", "DATA", "RESULT"]
    rows = {line.split()[0]: line for line in lines[1:7]}
    assert set(rows) == set(cloud.ids.values())  # the admin token sees project other's image too
    assert rows[cloud.ids["valid"]].endswith("FAIL") and "(soon)" in rows[cloud.ids["valid"]]
    assert "  expires-soon: certificate O=imgsign test PKI" in proc.stdout
    assert "6 image(s): 0 pass, 6 fail; expiry window 20000 day(s)" in proc.stdout


def test_all_pass_exits_zero_and_glance_errors_keep_their_codes(cloud):
    proc = cloud.audit("--project", cloud.project(OTHER), "--allow-unsigned", "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["summary"]["images"] == 1 and document["summary"]["passed"] == 1
    assert document["trusted"] is None and document["images"][0]["chain"]["status"] == "not-checked"
    refused = cloud.audit("--json", cloud="stopped")  # nothing listens
    assert refused.returncode == errors.GlanceUnavailable.exit_code and refused.stdout == ""
    assert refused.stderr.startswith("imgsign: error: ")


def test_progress_bar_only_on_a_terminal(cloud):
    """stderr a terminal: a bar per phase; the JSON on stdout is untouched. Not a terminal: nothing."""
    primary, secondary = os.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "imgsign", "-c", str(cloud.env.user_conf), "audit", "--project",
                               cloud.project(OTHER), "--allow-unsigned", "--download", "--json"], stdout=subprocess.PIPE,
                              stderr=secondary, text=True, env=cloud.env.cli_env("bare"), timeout=300)
        os.close(secondary)
        terminal = b""
        with contextlib.suppress(OSError):  # EIO once the child's end is closed and drained
            while chunk := os.read(primary, 4096):
                terminal += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0 and json.loads(proc.stdout)["summary"]["passed"] == 1
    assert_no_python_warning(terminal.decode(errors="replace"))
    assert b"assessing" in terminal and b"downloading" in terminal and b"Traceback" not in terminal
    quiet = cloud.audit("--project", cloud.project(OTHER), "--allow-unsigned", "--download", "--json")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_project_name_for_the_id_is_refused(cloud):
    """Glance's owner filter with the project's *name* matches nothing: main audited zero images and exited 0."""
    refused = cloud.audit("--project", USER, "--json")
    assert refused.returncode == errors.InputError.exit_code and refused.stdout == "", refused.stderr
    assert f"project {USER} ({cloud.project(USER)})" in refused.stderr, refused.stderr


# --- audit by trust policy (issue 22 item 5) ---------------------------------------------------------------


def _policy_file(path: Path, rules: list[dict]) -> Path:
    path.write_text(json.dumps({
        "version": 1,
        "trustStores": {"pki": {"certificates": [str(pki("root-ca.pem"))],
                                "intermediates": [str(pki("intermediate-ca.pem"))]}},
        "rules": [{"trustStores": ["pki"], "trustedIdentities": ["*"], **rule} for rule in rules]}))
    return path


def test_audit_by_policy_reports_the_rule_and_verdict_and_what_a_change_would_break(cloud, tmp_path):
    strict = _policy_file(tmp_path / "strict.yaml", [{"name": "everything", "scope": "*", "level": "strict"}])
    lenient = _policy_file(tmp_path / "lenient.yaml", [
        {"name": "demo-audit", "scope": {"owner": cloud.project(USER)}, "level": "audit"},
        {"name": "everything", "scope": "*", "level": "strict"}])

    proc = cloud.audit("--json", "--download", "--policy", lenient, "--compare", strict)
    assert proc.returncode == errors.PolicyViolation.exit_code, proc.stderr
    document = json.loads(proc.stdout)
    assert document["policy"] == str(lenient) and document["compare"]["policy"] == str(strict)
    images = _by_kind(cloud, document)
    assert {k: (v["rule"], v["verdict"]) for k, v in images.items()} == {
        "valid": ("demo-audit", "trusted"),
        "unsigned": ("demo-audit", "allowed-with-warnings"),
        "expired": ("demo-audit", "allowed-with-warnings"),
        "untrusted": ("demo-audit", "allowed-with-warnings"),
        "tampered": ("demo-audit", "refused"),  # audit still enforces integrity
        "other": ("everything", "refused"),
    }
    assert [w["reason"] for w in images["untrusted"]["warnings"]] == ["untrusted-certificate"]
    assert _reasons(images["tampered"]) == ["invalid-signature"]
    by_id = {v: k for k, v in cloud.ids.items()}
    assert sorted(by_id[i] for i in document["compare"]["newly_passing"] if i in by_id) == \
        ["expired", "unsigned", "untrusted"]
    assert document["compare"]["newly_failing"] == []

    # The other way round: tightening the policy breaks these three; the words say so.
    tighter = cloud.audit("--policy", strict, "--compare", lenient, "--project", cloud.project(USER))
    assert tighter.returncode == errors.PolicyViolation.exit_code, tighter.stderr
    assert "RULE" in tighter.stdout.splitlines()[0] and "VERDICT" in tighter.stdout.splitlines()[0]
    assert "3 image(s) pass under it and fail now, 0 fail under it and pass now" in tighter.stdout
    for kind in ("unsigned", "expired", "untrusted"):
        assert f"now FAILS: {cloud.ids[kind]} ({kind}): rule demo-audit -> everything" in tighter.stdout


def test_audit_policy_usage_errors(cloud, tmp_path):
    strict = _policy_file(tmp_path / "strict.yaml", [{"name": "everything", "scope": "*", "level": "strict"}])
    assert cloud.audit("--compare", strict).returncode == 2  # nothing to compare it with
    assert cloud.audit("--policy", strict, *TRUST).returncode == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules: {}\n")
    refused = cloud.audit("--policy", broken)
    assert refused.returncode == errors.TrustPolicyError.exit_code and "rules: must be a list" in refused.stderr


def test_verify_image_under_a_policy_takes_the_facts_from_the_image_record(cloud, tmp_path):
    strict = _policy_file(tmp_path / "strict.yaml", [{"name": "everything", "scope": "*", "level": "strict"}])
    lenient = _policy_file(tmp_path / "lenient.yaml", [
        {"name": "demo-audit", "scope": {"owner": cloud.project(USER)}, "level": "audit"},
        {"name": "everything", "scope": "*", "level": "strict"}])
    untrusted = cloud.env.cli("bare", "verify", "--image", cloud.ids["untrusted"], "--policy", strict, "--json")
    assert untrusted.returncode == errors.UntrustedCertificate.exit_code, untrusted.stderr
    assert json.loads(untrusted.stdout)["policy"]["rule"] == "everything"
    logged = cloud.env.cli("bare", "verify", "--image", cloud.ids["untrusted"], "--policy", lenient, "--json")
    assert logged.returncode == 0, logged.stderr
    assert json.loads(logged.stdout)["policy"]["verdict"] == "allowed-with-warnings"
    assert "trust policy rule demo-audit (audit) logs: authenticity" in logged.stderr
    unsigned = cloud.env.cli("bare", "verify", "--image", cloud.ids["unsigned"], "--policy", lenient)
    assert unsigned.returncode == 0 and "allows it unsigned (audit)" in unsigned.stdout, unsigned
    assert cloud.env.cli("bare", "verify", "--image", cloud.ids["unsigned"], "--policy", strict).returncode == \
        errors.UnsignedImage.exit_code
    tampered = cloud.env.cli("bare", "verify", "--image", cloud.ids["tampered"], "--policy", lenient)
    assert tampered.returncode == errors.InvalidSignature.exit_code, tampered.stderr
    explained = cloud.env.cli("bare", "policy", "explain", "--image", cloud.ids["other"], "--policy", lenient,
                              "--json")
    assert explained.returncode == 0 and json.loads(explained.stdout)["rule"]["name"] == "everything"
