"""cursive (what Glance and Nova run) accepts imgsign signatures, through castellan unchanged.

The certificates are served by imgsign's embedded castellan backend, selected only
with castellan's own ``[key_manager] backend`` option in a config file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from castellan import key_manager
from castellan.common.objects import x_509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from oslo_config import cfg
from oslo_context import context as oslo_context

from tests.conftest import HASHES, LEAVES, cert_of, key_of, pki, run_cli

CURSIVE_KEY_TYPES = ["RSA-PSS", "DSA", "ECC_SECP384R1", "ECC_SECP521R1"]
SECT = [k for k in LEAVES if k.startswith("ECC_SECT")]
HOST = Path(__file__).with_name("cursive_host.py")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """A key store with every leaf certificate, and the config file a Nova host would have."""
    work = tmp_path_factory.mktemp("cloud")
    config = work / "nova.conf"
    config.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {work / 'keystore.sqlite3'}\n")
    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[str(config)])
    manager = key_manager.API(conf)
    context = oslo_context.RequestContext(project_id="demo")
    uuids = {}
    for key_type in LEAVES:
        der = x509.load_pem_x509_certificate(cert_of(key_type).read_bytes()).public_bytes(Encoding.DER)
        uuids[key_type] = manager.store(context, x_509.X509(der, name=f"signer {key_type}"))
    image = work / "disk.img"
    image.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    tampered = work / "tampered.img"
    data = bytearray(image.read_bytes())
    data[12345] ^= 0x04
    tampered.write_bytes(data)
    return {"config": config, "uuids": uuids, "image": image, "tampered": tampered, "work": work}


def run_cursive(cloud, jobs):
    jobs_file = cloud["work"] / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(HOST), str(cloud["config"]), str(jobs_file)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def imgsign_properties(cloud, key_type, hash_name):
    result = run_cli("sign", cloud["image"], "--key", key_of(key_type), "--cert", cert_of(key_type),
                     "--cert-uuid", cloud["uuids"][key_type], "--hash-method", hash_name)
    assert result.code == 0, result
    return result.json()


def test_cursive_verifies_imgsign_signatures(cloud):
    jobs, expected = [], []
    for key_type in CURSIVE_KEY_TYPES:
        for hash_name in HASHES:
            props = imgsign_properties(cloud, key_type, hash_name)
            jobs += [{"image": str(cloud["image"]), "properties": props},
                     {"image": str(cloud["tampered"]), "properties": props}]
            expected += ["ok", "InvalidSignature"]
    assert run_cursive(cloud, jobs) == expected


def test_cursive_verifies_image_signed_with_store_cert(cloud, tmp_path):
    """`imgsign sign --store-cert` on an operator's machine, then Nova's checks with cursive.

    The operator's imgsign.conf points at the same castellan backend the compute
    host uses; cursive's ``verify_certificate`` validates the stored signer
    certificate against the stored CA certificates (Nova's trusted_image_certificates).
    """
    from tests.conftest import pki

    operator_conf = tmp_path / "imgsign.conf"
    operator_conf.write_text(cloud["config"].read_text() + "\n[imgsign]\nproject_id = operators\n")
    signed = run_cli("-c", operator_conf, "sign", cloud["image"], "--key", key_of("ECC_SECP384R1"),
                     "--cert", cert_of("ECC_SECP384R1"), "--store-cert", "--hash-method", "SHA-384")
    assert signed.code == 0, signed
    props = signed.json()
    assert props["img_signature_certificate_uuid"] not in cloud["uuids"].values()  # a fresh object
    again = run_cli("-c", operator_conf, "sign", cloud["image"], "--key", key_of("ECC_SECP384R1"),
                    "--cert", cert_of("ECC_SECP384R1"), "--store-cert")
    assert again.json()["img_signature_certificate_uuid"] == props["img_signature_certificate_uuid"]  # no duplicate
    trusted = []
    for ca in ("root-ca", "intermediate-ca"):
        stored = run_cli("-c", operator_conf, "cert", "store", pki(ca + ".pem"), "--name", ca)
        assert stored.code == 0, stored
        trusted.append(stored.stdout.strip())
    jobs = [
        {"image": str(cloud["image"]), "properties": props, "trusted": trusted},
        {"image": str(cloud["tampered"]), "properties": props, "trusted": trusted},
        {"image": str(cloud["image"]), "properties": props, "trusted": [trusted[0]]},  # intermediate missing
    ]
    jobs = [{**job, "project_id": "operators"} for job in jobs]
    ok, tampered, untrusted = run_cursive(cloud, jobs)
    assert (ok, tampered) == ("ok", "InvalidSignature")
    assert "Certificate chain building failed" in untrusted
    path = tmp_path / "p.json"
    path.write_text(json.dumps(props))
    verified = run_cli("-c", operator_conf, "verify", cloud["image"], "--properties", path)
    assert verified.code == 0, verified


def test_project_isolation_seen_by_cursive(cloud):
    props = imgsign_properties(cloud, "RSA-PSS", "SHA-256")
    [result] = run_cursive(cloud, [{"image": str(cloud["image"]), "properties": props, "project_id": "other"}])
    assert result.startswith("SignatureVerificationError") and "Certificate not found" in result


def test_cursive_cannot_verify_binary_curves_but_imgsign_can(cloud, tmp_path):
    """Today's cryptography dropped SECT curves, so cursive refuses them; imgsign verifies them."""
    for key_type in SECT:
        props = imgsign_properties(cloud, key_type, "SHA-256")
        [result] = run_cursive(cloud, [{"image": str(cloud["image"]), "properties": props}])
        assert "Invalid signature key type" in result
        path = tmp_path / "p.json"
        path.write_text(json.dumps(props))
        assert run_cli("verify", cloud["image"], "--properties", path, "--cert", cert_of(key_type)).code == 0


def test_cursive_accepts_what_imgsign_refuses(cloud, tmp_path):
    """imgsign is stricter than cursive: a P-384 key declared as ECC_SECP521R1."""
    props = imgsign_properties(cloud, "ECC_SECP384R1", "SHA-256")
    props["img_signature_key_type"] = "ECC_SECP521R1"
    [result] = run_cursive(cloud, [{"image": str(cloud["image"]), "properties": props}])
    assert result == "ok"  # cursive's laxness, documented in specs/openstack-compatibility.md
    path = tmp_path / "p.json"
    path.write_text(json.dumps(props))
    refused = run_cli("verify", cloud["image"], "--properties", path, "--cert", cert_of("ECC_SECP384R1"))
    assert refused.code == 13 and "ECC_SECP521R1 is declared" in refused.stderr


def test_cursive_ignores_the_raw_statement_properties(cloud, tmp_path):
    """A qcow2 signed with its raw-digest statement: cursive (Nova's download check) verifies it."""
    from cursive import signature_utils

    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", str(image)], check=True,
                   capture_output=True)
    signed = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", cloud["uuids"]["RSA-PSS"])
    assert signed.code == 0, signed
    props = signed.json()
    assert "imgsign_raw_v1_signature" in props
    assert signature_utils.should_create_verifier(props)
    assert run_cursive(cloud, [{"image": str(image), "properties": props}]) == ["ok"]


def test_cursive_ignores_the_timestamp_token_properties(cloud, tmp_path):
    """An image signed with an RFC 3161 timestamp (imgsign_tst_v1_*): cursive verifies its signature as before."""
    from cursive import signature_utils

    from tests.servers.tsa import issue_tsa, tsa

    tsa_key, tsa_cert = issue_tsa(tmp_path, "tsa", pki("root-ca.key"), pki("root-ca.pem"))
    with tsa(tsa_key, tsa_cert, tmp_path / "tsa-run") as url:
        signed = run_cli("sign", cloud["image"], "--key", key_of("RSA-PSS"), "--cert-uuid", cloud["uuids"]["RSA-PSS"],
                         "--tsa", url, "--tsa-ca", pki("root-ca.pem"))
    assert signed.code == 0, signed
    props = signed.json()
    assert any(name.startswith("imgsign_tst_v1") for name in props)
    assert signature_utils.should_create_verifier(props)
    assert run_cursive(cloud, [{"image": str(cloud["image"]), "properties": props},
                               {"image": str(cloud["tampered"]), "properties": props}]) == ["ok", "InvalidSignature"]
