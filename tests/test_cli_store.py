"""``imgsign cert …``, ``imgsign key …``, ``sign --store-cert`` and ``verify`` without ``--cert``,
on the embedded key manager (the default backend), through the real CLI."""

from __future__ import annotations

import json

import pytest

from imgsign import errors
from tests.conftest import cert_of, key_of, pki, run_cli


@pytest.fixture
def env(tmp_path):
    """An empty embedded store and no config file: the out-of-the-box setup."""
    return {"IMGSIGN_KEYSTORE": str(tmp_path / "store" / "keystore.sqlite3"),
            "IMGSIGN_CONFIG": "", "XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}


def cli(env, *args):
    return run_cli(*args, env=env)


def test_cert_store_list_show_delete(env):
    stored = cli(env, "cert", "store", cert_of("RSA-PSS"), "--name", "release signer")
    assert stored.code == 0, stored
    cert_id = stored.stdout.strip()
    again = cli(env, "cert", "store", pki("leaf-rsa-pss.der"))  # same certificate, DER this time
    assert again.stdout.strip() == cert_id and "already stored" in again.stderr

    listed = cli(env, "cert", "list", "--json")
    assert [row["id"] for row in listed.json()] == [cert_id]
    assert "RSA-PSS" in listed.json()[0]["key"]
    shown = cli(env, "cert", "show", cert_id, "--pem")
    assert shown.stdout == cert_of("RSA-PSS").read_text()

    assert cli(env, "cert", "delete", cert_id).code == 0
    missing = cli(env, "cert", "show", cert_id)
    assert missing.code == errors.ObjectNotFound.exit_code and cert_id in missing.stderr
    assert cli(env, "cert", "list", "--json").json() == []


def test_sign_store_cert_then_verify_fetches_certificate(env, sample_image, tmp_path):
    signed = cli(env, "sign", sample_image, "--key", key_of("ECC_SECP521R1"), "--cert", cert_of("ECC_SECP521R1"),
                 "--store-cert", "--hash-method", "SHA-512")
    assert signed.code == 0, signed
    props = signed.json()
    assert "stored certificate" in signed.stderr
    # The certificate is now known: --cert alone looks its id up, without storing a duplicate.
    again = cli(env, "sign", sample_image, "--key", key_of("ECC_SECP521R1"), "--cert", cert_of("ECC_SECP521R1"))
    assert again.json()["img_signature_certificate_uuid"] == props["img_signature_certificate_uuid"]
    assert len(cli(env, "cert", "list", "--json").json()) == 1

    path = tmp_path / "props.json"
    path.write_text(json.dumps(props))
    ok = cli(env, "verify", sample_image, "--properties", path)
    assert ok.code == 0, ok

    cli(env, "cert", "delete", props["img_signature_certificate_uuid"])
    gone = cli(env, "verify", sample_image, "--properties", path)
    assert gone.code == errors.ObjectNotFound.exit_code
    assert props["img_signature_certificate_uuid"] in gone.stderr and "embedded key manager" in gone.stderr


def test_sign_with_unstored_cert_says_what_to_do(env, sample_image):
    result = cli(env, "sign", sample_image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"))
    assert result.code == errors.ObjectNotFound.exit_code and "--store-cert" in result.stderr


def test_store_cert_refuses_a_key_that_is_not_the_certificates(env, sample_image):
    result = cli(env, "sign", sample_image, "--key", key_of("DSA"), "--cert", cert_of("RSA-PSS"), "--store-cert")
    assert result.code in (errors.CertificateKeyMismatch.exit_code, errors.KeyTypeMismatch.exit_code), result
    assert cli(env, "cert", "list", "--json").json() == []  # nothing stored on failure


def test_key_store_list_delete_never_prints_the_key(env):
    key_pem = key_of("RSA-PSS").read_text()
    secret_line = key_pem.splitlines()[5]
    stored = cli(env, "key", "store", pki("leaf-rsa-pss-encrypted.key"),
                 "--passphrase-file", pki("leaf-rsa-pss-encrypted.passphrase"), "--name", "ci key")
    assert stored.code == 0, stored
    key_id = stored.stdout.strip()
    listed = cli(env, "key", "list")
    assert key_id in listed.stdout and "ci key" in listed.stdout
    for result in (stored, listed):
        assert secret_line not in result.stdout + result.stderr
    assert cli(env, "key", "delete", key_id).code == 0
    assert key_id not in cli(env, "key", "list").stdout


def test_misconfigured_backends_name_the_backend_and_setting(env, tmp_path, sample_image):
    unknown = tmp_path / "unknown.conf"
    unknown.write_text("[key_manager]\nbackend = no-such-backend\n")
    result = run_cli("-c", unknown, "cert", "list", env=env)
    assert result.code == errors.KeyManagerError.exit_code
    assert "no-such-backend" in result.stderr and "[key_manager] backend" in result.stderr

    blocked = tmp_path / "blocked"
    blocked.write_text("")
    bad_path = tmp_path / "bad-path.conf"
    bad_path.write_text(f"[imgsign_embedded]\npath = {blocked}/keystore.sqlite3\n")
    result = run_cli("-c", bad_path, "cert", "list", env=env)
    assert result.code == errors.KeyManagerError.exit_code
    assert "embedded key manager" in result.stderr and "[imgsign_embedded] path" in result.stderr

    vault = tmp_path / "vault.conf"
    vault.write_text("[key_manager]\nbackend = vault\n[vault]\nvault_url = http://127.0.0.1:9\n"
                     "root_token_id = s.super-secret-token\nkv_mountpoint = secret\n")
    props = tmp_path / "props.json"
    props.write_text(json.dumps({
        "img_signature": "AAAA", "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": "RSA-PSS", "img_signature_certificate_uuid": "0b6e3e1c-6a43-4bde-9a5e-3d1f6d1b8c2a",
    }))
    result = run_cli("-c", vault, "verify", sample_image, "--properties", props, env=env)
    assert result.code == errors.KeyManagerError.exit_code, result
    assert result.code != errors.InvalidSignature.exit_code
    assert "vault" in result.stderr and "127.0.0.1:9" in result.stderr
    assert "super-secret-token" not in result.stdout + result.stderr


def test_missing_config_file_is_an_input_error(env):
    result = run_cli("-c", "/nonexistent/imgsign.conf", "cert", "list", env=env)
    assert result.code == errors.InputError.exit_code and "/nonexistent/imgsign.conf" in result.stderr


def test_list_commands_have_json_and_a_header(env, tmp_path):
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.test_chain import NOT_COMPLETE, scoped_crl

    cert_id = cli(env, "cert", "store", cert_of("RSA-PSS")).stdout.strip()
    key_id = cli(env, "key", "store", key_of("ECC_SECP384R1"), "--name", "ci key").stdout.strip()
    delta = tmp_path / "delta.crl.der"
    delta.write_bytes(scoped_crl("intermediate-ca", revoke=[0x4242], extensions=NOT_COMPLETE["delta"])
                      .public_bytes(Encoding.DER))
    full_id = cli(env, "crl", "store", pki("intermediate-ca.crl.pem")).stdout.strip()
    delta_id = cli(env, "crl", "store", delta).stdout.strip()

    certs = cli(env, "cert", "list")
    assert certs.stdout.splitlines()[0].split() == ["ID", "NOT", "AFTER", "SUBJECT"]
    assert certs.stdout.splitlines()[1].startswith(cert_id)

    keys = cli(env, "key", "list")
    assert keys.stdout.splitlines()[0].split() == ["ID", "ALGORITHM", "NAME"]
    assert keys.stdout.splitlines()[1].split() == [key_id, "EC-384", "ci", "key"]
    key_rows = cli(env, "key", "list", "--json").json()
    assert key_rows == [{"id": key_id, "name": "ci key", "algorithm": "EC", "bit_length": 384,
                         "created": key_rows[0]["created"]}]
    assert isinstance(key_rows[0]["created"], int)

    crls = cli(env, "crl", "list")
    assert crls.stdout.splitlines()[0].split() == ["ID", "NEXT", "UPDATE", "ISSUER", "(REVOKED)", "SCOPE"]
    lines = dict(line.split(None, 1) for line in crls.stdout.splitlines()[1:])
    assert lines[full_id].endswith("(1 revoked)  complete") and lines[delta_id].endswith("(1 revoked)  delta")
    rows = {row["id"]: row for row in cli(env, "crl", "list", "--json").json()}
    assert set(rows[full_id]) == {"id", "issuer", "last_update", "next_update", "crl_number", "revoked", "limits"}
    assert rows[full_id]["limits"] == [] and rows[full_id]["revoked"] == 1 and rows[full_id]["crl_number"] == 1
    assert rows[delta_id]["limits"] == ["delta"] and rows[delta_id]["crl_number"] == 7
    assert "intermediate-ca" in rows[delta_id]["issuer"] and rows[delta_id]["next_update"].startswith("20")
