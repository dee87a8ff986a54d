"""`imgsign verify --trusted …`: chain validation through the CLI, CRLs from files and the key manager."""

from __future__ import annotations

import subprocess
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
    # Options that do not go together are a usage error (exit 2, no JSON), as the docs promise.
    assert result.code == 2 and "--trusted" in result.stderr, result
    assert result.stdout == ""


# --- stored CRLs count however the certificates are given (issue 10, item 7a) -------------------------


def store_crl(env, path):
    result = run_cli("crl", "store", path, env=env)
    assert result.code == 0, result
    return result.stdout.strip()


def test_stored_crl_counts_with_cert_and_trusted_file(env, sample_image, tmp_path):
    """Base commit: with --trusted-file the key manager was never opened, so the stored CRL was
    skipped and the revoked signer verified (exit 0)."""
    props = sign(env, sample_image, "leaf-revoked", tmp_path)
    store_crl(env, pki("intermediate-ca.crl.pem"))
    result = verify(env, sample_image, props, "--cert", pki("leaf-revoked.pem"), "--trusted-file", pki("chain.pem"))
    assert result.code == errors.CertificateRevoked.exit_code, result
    assert "leaf-revoked" in result.json()["message"] and "key_compromise" in result.json()["message"]


def test_stored_crl_satisfies_require_crl_with_trusted_file(env, sample_image, tmp_path):
    props = sign(env, sample_image, "leaf-rsa-pss", tmp_path)
    trust = ("--cert", pki("leaf-rsa-pss.pem"), "--trusted-file", pki("root-ca.pem"),
             "--intermediate", pki("intermediate-ca.pem"), "--require-crl")
    assert verify(env, sample_image, props, *trust).code == errors.CertificateError.exit_code
    store_crl(env, pki("root-ca.crl.pem"))
    store_crl(env, pki("intermediate-ca.crl.pem"))
    ok = verify(env, sample_image, props, *trust)
    assert ok.code == 0, ok


def test_unreachable_key_manager_refuses_instead_of_skipping_stored_crls(env, sample_image, tmp_path):
    """Base commit: exit 0 — the chain was validated without the (unreachable) key manager's CRLs."""
    props = sign(env, sample_image, "leaf-rsa-pss", tmp_path)
    vault = tmp_path / "vault.conf"
    vault.write_text("[key_manager]\nbackend = vault\n[vault]\nvault_url = http://127.0.0.1:9\n"
                     "root_token_id = s.not-a-real-token\nkv_mountpoint = secret\n")
    result = run_cli("-c", vault, "verify", sample_image, "--properties", props, "--json", "--cert",
                     pki("leaf-rsa-pss.pem"), "--trusted-file", pki("chain.pem"), env=env)
    assert result.code == errors.KeyManagerError.exit_code, result
    assert "vault" in result.json()["message"] and "CRL" in result.json()["message"]
    without_trust = run_cli("-c", vault, "verify", sample_image, "--properties", props, "--cert",
                            pki("leaf-rsa-pss.pem"), env=env)
    assert without_trust.code == 0, without_trust  # no chain to validate: no CRLs needed


def test_boot_cache_consults_stored_crls(env, tmp_path):
    image = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    props = sign(env, image, "leaf-revoked", tmp_path)
    root, intermediate = store(env, "root-ca"), store(env, "intermediate-ca")
    store_crl(env, pki("intermediate-ca.crl.pem"))
    (tmp_path / "instances").mkdir()
    result = run_cli("boot", "cache", image, "--image-id", "img-1", "--properties", props, "--trusted", root,
                     "--trusted", intermediate, "--instances-path", tmp_path / "instances",
                     "--state-dir", tmp_path / "state", env=env)
    assert result.code == errors.CertificateRevoked.exit_code, result
    assert not list((tmp_path / "instances").rglob("*"))  # nothing cached


@pytest.mark.parametrize("kind", ["delta", "only-ca-certs", "indirect", "unknown-critical-extension"])
def test_stored_scoped_crl_does_not_satisfy_require_crl(env, sample_image, tmp_path, kind):
    """Base commit: exit 0 for the revoked signer — the stored delta/scoped CRL passed as complete."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.test_chain import NOT_COMPLETE, scoped_crl

    props = sign(env, sample_image, "leaf-revoked", tmp_path)
    scoped = tmp_path / f"{kind}.crl.der"
    scoped.write_bytes(scoped_crl("intermediate-ca", extensions=NOT_COMPLETE[kind]).public_bytes(Encoding.DER))
    store_crl(env, scoped)
    result = verify(env, sample_image, props, "--trusted-file", pki("root-ca.pem"),
                    "--intermediate", pki("intermediate-ca.pem"), "--crl", pki("root-ca.crl.pem"), "--require-crl")
    assert result.code == errors.CertificateError.exit_code, result
    assert "no complete certificate revocation list" in result.json()["message"]
