"""`imgsign verify --trusted …`: chain validation through the CLI, CRLs from files and the key manager."""

from __future__ import annotations

import json
import time

import pytest

from imgsign import errors
from tests.conftest import pki, run_cli


@pytest.fixture
def env(tmp_path):
    return {"IMGSIGN_KEYSTORE": str(tmp_path / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(tmp_path)}


def sign(env, image, stem, tmp_path):
    """Sign with leaf ``stem``, storing its certificate; the properties file."""
    result = run_cli("sign", image, "--key", pki(stem + ".key"), "--cert", pki(stem + ".pem"), "--store-cert",
                     "--allow-weak-keys", env=env)
    assert result.code == 0, result
    path = tmp_path / f"{stem}.json"
    path.write_text(result.stdout)
    return path


def store(env, stem):
    result = run_cli("cert", "store", pki(stem + ".pem"), env=env)
    assert result.code == 0, result
    return result.stdout.strip()


def verify(env, image, props, *args):
    return run_cli("verify", image, "--properties", props, "--json", *args, env=env)


def test_trusted_ids_from_the_key_manager(env, sample_image, tmp_path):
    props = sign(env, sample_image, "leaf-rsa-pss", tmp_path)
    root, intermediate = store(env, "root-ca"), store(env, "intermediate-ca")
    ok = verify(env, sample_image, props, "--trusted", root, "--trusted", intermediate)
    assert ok.code == 0, ok
    assert [s.split()[-1] for s in ok.json()["chain"]] == ["leaf-rsa-pss", "intermediate-ca"]  # nearest trusted

    missing = verify(env, sample_image, props, "--trusted", root)
    assert missing.code == errors.UntrustedCertificate.exit_code
    assert "missing intermediate" in missing.json()["message"]
    helped = verify(env, sample_image, props, "--trusted", root, "--intermediate", pki("chain.pem"))
    assert helped.code == 0, helped
    assert [s.split()[-1] for s in helped.json()["chain"]] == ["leaf-rsa-pss", "intermediate-ca", "root-ca"]


def test_trusted_ids_default_from_config(env, sample_image, tmp_path):
    props = sign(env, sample_image, "leaf-ecc-secp384r1", tmp_path)
    intermediate = store(env, "intermediate-ca")
    conf = tmp_path / "imgsign.conf"
    conf.write_text(f"[imgsign]\ntrusted_certificate_ids = {intermediate}\n")
    env = {**env, "IMGSIGN_CONFIG": str(conf)}
    assert verify(env, sample_image, props).code == 0
    untrusted_props = sign(env, sample_image, "leaf-untrusted", tmp_path)
    refused = verify(env, sample_image, untrusted_props)
    assert refused.code == errors.UntrustedCertificate.exit_code, refused
    assert refused.json()["reason"] == "untrusted-certificate"


def test_revoked_leaf_by_crl_file_and_by_stored_crl(env, sample_image, tmp_path):
    props = sign(env, sample_image, "leaf-revoked", tmp_path)
    trust = ("--trusted-file", pki("root-ca.pem"), "--intermediate", pki("intermediate-ca.pem"))
    assert verify(env, sample_image, props, *trust).code == 0  # no CRL known yet
    by_file = verify(env, sample_image, props, *trust, "--crl", pki("intermediate-ca.crl.pem"))
    assert by_file.code == errors.CertificateRevoked.exit_code, by_file
    stored = run_cli("crl", "store", pki("intermediate-ca.crl.pem"), env=env)
    assert stored.code == 0, stored
    assert "1 revoked" in run_cli("crl", "list", env=env).stdout
    by_store = verify(env, sample_image, props, "--trusted", store(env, "root-ca"),
                      "--intermediate", pki("intermediate-ca.pem"))
    assert by_store.code == errors.CertificateRevoked.exit_code, by_store
    assert "revoked" in by_store.json()["message"]


def test_revoked_intermediate(env, sample_image, tmp_path):
    props = sign(env, sample_image, "leaf-under-revoked-intermediate", tmp_path)
    result = verify(env, sample_image, props, "--trusted-file", pki("root-ca.pem"),
                    "--intermediate", pki("intermediate-revoked-ca.pem"), "--crl", pki("root-ca.crl.pem"))
    assert result.code == errors.CertificateRevoked.exit_code, result


@pytest.mark.parametrize("stem, intermediate, fragment", [
    ("leaf-under-expired-intermediate", "intermediate-expired-ca", "not valid at validation time"),
    ("leaf-issuer-not-ca", "not-a-ca", "basicConstraints"),
])
def test_bad_issuers(env, sample_image, tmp_path, stem, intermediate, fragment):
    props = sign(env, sample_image, stem, tmp_path)
    result = verify(env, sample_image, props, "--trusted-file", pki("root-ca.pem"),
                    "--intermediate", pki(intermediate + ".pem"))
    assert result.code == errors.UntrustedCertificate.exit_code and fragment in result.json()["message"], result


def test_cross_signed_loop_ends_with_an_error(env, sample_image, tmp_path):
    props = sign(env, sample_image, "leaf-under-cross", tmp_path)
    bundle = tmp_path / "cross.pem"
    bundle.write_text(pki("cross-a-ca.pem").read_text() + pki("cross-b-ca.pem").read_text())
    start = time.monotonic()
    result = verify(env, sample_image, props, "--trusted-file", pki("root-ca.pem"), "--intermediate", bundle)
    assert result.code == errors.UntrustedCertificate.exit_code and "cross-signed" in result.json()["message"]
    assert time.monotonic() - start < 10  # a whole CLI process; the check itself is milliseconds


def test_leaf_without_digital_signature(env, sample_image, tmp_path):
    signed = run_cli("sign", sample_image, "--key", pki("leaf-no-digital-signature.key"),
                     "--cert-uuid", "0b6e3e1c-6a43-4bde-9a5e-3d1f6d1b8c2a", env=env)
    assert signed.code == 0, signed  # signing with a bare key is allowed; verification judges the certificate
    props = tmp_path / "p.json"
    props.write_text(signed.stdout)
    result = verify(env, sample_image, props, "--cert", pki("leaf-no-digital-signature.pem"),
                    "--trusted-file", pki("chain.pem"))
    assert result.code == errors.CertificateError.exit_code and "digitalSignature" in result.json()["message"]


def test_chain_options_need_a_trust_anchor(env, sample_image, tmp_path):
    props = sign(env, sample_image, "leaf-rsa-pss", tmp_path)
    result = verify(env, sample_image, props, "--crl", pki("intermediate-ca.crl.pem"))
    assert result.code == errors.InputError.exit_code and "--trusted" in result.json()["message"]
    assert json.loads(result.stdout)["valid"] is False
