"""The imgsign command line: contract, every negative case with its message and exit code."""

from __future__ import annotations

import json
import os
import shlex
import stat

import pytest

from imgsign import errors
from tests.conftest import CERT_UUID, cert_of, key_of, pki, run_cli


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """An image and its properties, signed with the RSA-PSS leaf."""
    work = tmp_path_factory.mktemp("cli")
    image = work / "disk.img"
    image.write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    result = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"), "--cert-uuid", CERT_UUID)
    assert result.code == 0, result
    props = work / "props.json"
    props.write_text(result.stdout)
    return work, image, props


def verify(image, props, cert=None, *extra):
    return run_cli("verify", image, "--properties", props, "--cert", cert or cert_of("RSA-PSS"), *extra)


def write_props(tmp_path, props_path, **changes):
    data = json.loads(props_path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    out = tmp_path / "changed.json"
    out.write_text(json.dumps(data))
    return out


def test_sign_json_has_exactly_the_four_properties(signed):
    _, _, props = signed
    data = json.loads(props.read_text())
    assert sorted(data) == sorted(["img_signature", "img_signature_hash_method", "img_signature_key_type",
                                   "img_signature_certificate_uuid"])
    assert data["img_signature_key_type"] == "RSA-PSS" and data["img_signature_hash_method"] == "SHA-256"


def test_verify_ok(signed):
    _, image, props = signed
    result = verify(image, props)
    assert result.code == 0, result
    assert result.stdout.startswith("OK:") and result.stderr == ""  # no progress bar when not a TTY
    assert verify(image, props, None, "--quiet").stdout == ""


def test_verify_json(signed):
    _, image, props = signed
    result = verify(image, props, None, "--json")
    assert result.code == 0 and result.json()["valid"] is True and result.json()["reason"] == "ok"


VERIFY_JSON_KEYS = {"image", "valid", "reason", "message", "exit_code", "img_signature_hash_method",
                    "img_signature_key_type", "img_signature_certificate_uuid", "certificate_subject", "chain", "timestamp",
                    "ocsp"}


def test_verify_json_has_the_same_keys_on_success_and_failure(signed, tmp_path):
    """The documented list of keys, exactly, whether the image verifies or not (null when not known)."""
    _, image, props = signed
    ok = verify(image, props, None, "--json").json()
    assert set(ok) == VERIFY_JSON_KEYS and ok["message"] and ok["chain"] is None, ok
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    early = verify(image, garbage, None, "--json")
    assert early.code == errors.InputError.exit_code and set(early.json()) == VERIFY_JSON_KEYS, early
    assert early.json()["img_signature_key_type"] is None and early.json()["valid"] is False
    late = verify(image, props, cert_of("DSA"), "--json")
    assert set(late.json()) == VERIFY_JSON_KEYS and late.json()["img_signature_key_type"] == "RSA-PSS", late


def test_openstack_and_env_formats(signed, tmp_path):
    _, image, _ = signed
    result = run_cli("sign", image, "--key", key_of("ECC_SECP384R1"), "--cert-uuid", CERT_UUID,
                     "--format", "openstack", "--hash-method", "SHA-512")
    assert result.code == 0, result
    args = shlex.split(result.stdout)
    props = dict(a.split("=", 1) for a in args[1::2])
    assert args[0::2] == ["--property"] * 4 and props["img_signature_hash_method"] == "SHA-512"
    env = run_cli("sign", image, "--key", key_of("ECC_SECP384R1"), "--cert-uuid", CERT_UUID, "--format", "env")
    assert "IMG_SIGNATURE_KEY_TYPE=ECC_SECP384R1" in env.stdout
    # properties as `openstack image show -f json` prints them verify too
    show = tmp_path / "show.json"
    show.write_text(json.dumps({"id": "abc", "name": "img", "properties": props}))
    assert verify(image, show, cert_of("ECC_SECP384R1")).code == 0


def test_output_file_is_written_atomically(signed, tmp_path):
    _, image, _ = signed
    out = tmp_path / "p.json"
    assert run_cli("sign", image, "--key", key_of("DSA"), "--cert-uuid", CERT_UUID, "-o", out).code == 0
    assert json.loads(out.read_text())["img_signature_key_type"] == "DSA"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".imgsign-")]


# --- negative cases: (what, expected exception class, message fragment) ---------------

def test_flipped_byte(signed, tmp_path):
    _, image, props = signed
    bad = tmp_path / "flipped.img"
    data = bytearray(image.read_bytes())
    data[1234567] ^= 0x80
    bad.write_bytes(data)
    result = verify(bad, props)
    assert result.code == errors.InvalidSignature.exit_code == 31, result
    assert "does not match" in result.stderr


@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_truncated_and_extended(signed, tmp_path, change):
    _, image, props = signed
    data = image.read_bytes()
    bad = tmp_path / "bad.img"
    bad.write_bytes(data[:-4096] if change == "truncate" else data + b"\0" * 512)
    result = verify(bad, props)
    assert result.code == errors.InvalidSignature.exit_code, result


@pytest.mark.parametrize(
    "changes, error, fragment",
    [
        ({"img_signature": "not*base64"}, errors.PropertiesError, "not valid base64"),
        ({"img_signature_key_type": "RSA"}, errors.UnsupportedAlgorithm, "unknown key type 'RSA'"),
        ({"img_signature_key_type": "DSA"}, errors.KeyTypeMismatch, "DSA is declared"),
        ({"img_signature_hash_method": "SHA-1"}, errors.UnsupportedAlgorithm, "unknown hash method 'SHA-1'"),
        ({"img_signature_certificate_uuid": None}, errors.PropertiesError, "missing image property: img_signature_certificate_uuid"),
        ({"img_signature": None}, errors.PropertiesError, "missing image property: img_signature"),
        ({"img_signature": "AAAA"}, errors.MalformedSignature, "RSA-PSS signature"),
    ],
)
def test_bad_properties(signed, tmp_path, changes, error, fragment):
    _, image, props = signed
    result = verify(image, write_props(tmp_path, props, **changes))
    assert result.code == error.exit_code, result
    assert fragment in result.stderr


def test_bad_properties_json_output(signed, tmp_path):
    _, image, props = signed
    result = verify(image, write_props(tmp_path, props, img_signature_hash_method="MD5"), None, "--json")
    assert result.code == errors.UnsupportedAlgorithm.exit_code
    assert result.json()["valid"] is False and result.json()["reason"] == "unsupported-algorithm"


def test_wrong_certificate(signed):
    _, image, props = signed
    result = verify(image, props, pki("leaf-under-pss-intermediate.pem"))  # another RSA-3072 key
    assert result.code == errors.InvalidSignature.exit_code, result
    smaller = verify(image, props, pki("leaf-untrusted.pem"))  # RSA-2048: the signature cannot even fit
    assert smaller.code == errors.MalformedSignature.exit_code and "384 bytes" in smaller.stderr, smaller


@pytest.mark.parametrize("stem, error", [("leaf-expired", errors.CertificateExpired),
                                         ("leaf-not-yet-valid", errors.CertificateNotYetValid)])
def test_certificate_dates(tmp_path, stem, error, signed):
    _, image, _ = signed
    signed_props = run_cli("sign", image, "--key", pki(stem + ".key"), "--cert-uuid", CERT_UUID)
    assert signed_props.code == 0, signed_props
    props = tmp_path / "p.json"
    props.write_text(signed_props.stdout)
    result = verify(image, props, pki(stem + ".pem"))
    assert result.code == error.exit_code, result
    assert verify(image, props, pki(stem + ".pem"), "--ignore-cert-dates").code == 0
    refused = run_cli("sign", image, "--key", pki(stem + ".key"), "--cert", pki(stem + ".pem"), "--cert-uuid", CERT_UUID)
    assert refused.code == error.exit_code, refused


def test_missing_files(signed, tmp_path):
    _, image, props = signed
    for result in (verify(tmp_path / "nope.img", props), verify(image, tmp_path / "nope.json"),
                   verify(image, props, tmp_path / "nope.pem"),
                   run_cli("sign", tmp_path / "nope.img", "--key", key_of("DSA"), "--cert-uuid", CERT_UUID),
                   run_cli("sign", image, "--key", tmp_path / "nope.key", "--cert-uuid", CERT_UUID)):
        assert result.code == errors.InputError.exit_code, result
        assert "nope" in result.stderr and "No such file" in result.stderr


def test_directory_and_bad_json(signed, tmp_path):
    _, image, props = signed
    assert verify(tmp_path, props).code == errors.InputError.exit_code
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    result = verify(image, garbage)
    assert result.code == errors.InputError.exit_code and "not valid JSON" in result.stderr


def test_unreadable_and_encrypted_keys(signed, tmp_path):
    _, image, _ = signed
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"this is not a key")
    base = ("sign", image, "--cert-uuid", CERT_UUID, "--key")
    result = run_cli(*base, garbage)
    assert result.code == errors.PrivateKeyError.exit_code and "private key" in result.stderr, result
    encrypted = pki("leaf-rsa-pss-encrypted.key")
    result = run_cli(*base, encrypted)  # stdin is not a TTY: no prompt, a clear error
    assert result.code == errors.PrivateKeyError.exit_code and "encrypted" in result.stderr, result
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("nope\n")
    result = run_cli(*base, encrypted, "--passphrase-file", wrong)
    assert result.code == errors.PrivateKeyError.exit_code and "wrong passphrase" in result.stderr, result
    ok = run_cli(*base, encrypted, "--passphrase-file", pki("leaf-rsa-pss-encrypted.passphrase"))
    assert ok.code == 0, ok
    assert "test-passphrase" not in ok.stdout + ok.stderr


def test_key_and_certificate_mismatch(signed):
    _, image, _ = signed
    result = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("DSA"), "--cert-uuid", CERT_UUID)
    assert result.code == errors.CertificateKeyMismatch.exit_code, result
    result = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--key-type", "DSA", "--cert-uuid", CERT_UUID)
    assert result.code == errors.KeyTypeMismatch.exit_code, result


def test_weak_key_opt_out(signed):
    _, image, _ = signed
    result = run_cli("sign", image, "--key", pki("leaf-rsa-1024.key"), "--cert-uuid", CERT_UUID)
    assert result.code == errors.WeakKey.exit_code and "--allow-weak-keys" in result.stderr, result
    assert run_cli("sign", image, "--key", pki("leaf-rsa-1024.key"), "--cert-uuid", CERT_UUID,
                   "--allow-weak-keys").code == 0


def test_usage_errors_exit_2(signed):
    _, image, props = signed
    assert run_cli("sign", image, "--bogus").code == 2
    assert run_cli("verify", image).code == 2
    assert run_cli("sign", image, "--key", key_of("DSA"), "--hash-method", "MD5", "--cert-uuid", "x").code == 2
    result = run_cli("sign", image, "--key", key_of("DSA"))
    assert result.code == 2 and "--cert-uuid" in result.stderr


@pytest.mark.parametrize("args", [
    ("sign", "IMAGE", "--key", "KEY", "--store-cert", "--cert-uuid", CERT_UUID),
    ("sign", "IMAGE", "--key", "KEY", "--store-cert", "--cert", "CERT", "--cert-uuid", CERT_UUID),
    ("sign", "IMAGE", "--key", "KEY", "--cert-uuid", ""),
    ("sign", "IMAGE", "--key", "KEY", "--cert-uuid", "has space"),
    ("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--ca-cert", "CERT"),
    ("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--ca-key", "KEY"),
    ("keygen", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--ca-passphrase-file", "P"),
    ("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--days", "0"),
    ("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--days", "-5"),
    ("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--subject", ""),
    ("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--subject", "no equals sign"),
    ("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--bits", "100000000"),
    ("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", "K", "--out-cert", "C", "--bits", "512"),
    ("keygen", "--no-encrypt", "--key-type", "DSA", "--out-key", "K", "--out-cert", "C", "--bits", "2500"),
    ("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", "K", "--out-cert", "C", "--bits", "3072"),
    ("keygen", "--no-encrypt", "--key-type", "ECC_SECT571R1", "--out-key", "K", "--out-cert", "C", "--bits", "571"),
    ("cert", "show", ""), ("cert", "delete", ""), ("key", "delete", ""), ("crl", "delete", ""),
    ("cert", "show", " "), ("cert", "show", "x" * 256),
    ("verify", "IMAGE", "--properties", "PROPS", "--trusted", ""),
    ("boot", "cache", "IMAGE", "--image-id", "", "--properties", "PROPS"),
    ("boot", "check", "IMAGE", "--trusted-id", ""),
], ids=lambda a: " ".join(a))
def test_bad_option_values_and_combinations_are_usage_errors(signed, tmp_path, args):
    """Exit 2 with click's usage message, before any file is read or written."""
    _, image, props = signed
    names = {"IMAGE": image, "KEY": key_of("DSA"), "CERT": cert_of("DSA"), "PROPS": props,
             "K": tmp_path / "k.pem", "C": tmp_path / "c.pem", "P": tmp_path / "missing-pass"}
    result = run_cli(*(names.get(a, a) for a in args), env={"IMGSIGN_KEYSTORE": str(tmp_path / "ks.sqlite3")})
    assert result.code == 2, result
    assert "Usage:" in result.stderr and "imgsign: error" not in result.stderr
    assert not (tmp_path / "k.pem").exists() and not (tmp_path / "ks.sqlite3").exists()


def test_keygen_warns_below_the_verification_minimum(tmp_path):
    passphrase = tmp_path / "pw"
    passphrase.write_text("a passphrase\n")  # an encrypted key: no warning about that
    result = run_cli("keygen", "--passphrase-file", passphrase, "--key-type", "RSA-PSS", "--bits", 1024, "--out-key",
                     tmp_path / "k.pem", "--out-cert", tmp_path / "c.pem")
    assert result.code == 0, result
    assert "warning" in result.stderr and "--allow-weak-keys" in result.stderr
    quiet = run_cli("keygen", "--passphrase-file", passphrase, "--key-type", "RSA-PSS", "--bits", 2048, "--out-key",
                    tmp_path / "k2.pem", "--out-cert", tmp_path / "c2.pem")
    assert quiet.code == 0 and "warning" not in quiet.stderr, quiet


@pytest.mark.parametrize("key_type", ["RSA-PSS", "ECC_SECP384R1", "ECC_SECT571R1"])
def test_keygen_self_signed_and_issued(tmp_path, key_type, signed):
    _, image, _ = signed
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    result = run_cli("keygen", "--no-encrypt", "--key-type", key_type, "--out-key", key, "--out-cert", cert,
                     "--ca-cert", pki("intermediate-ca.pem"), "--ca-key", pki("intermediate-ca.key"),
                     "--days", 30, "--subject", "CN=Image Signer/One,O=Example")
    assert result.code == 0, result
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PRIVATE" not in (result.stdout + result.stderr).encode()
    again = run_cli("keygen", "--no-encrypt", "--key-type", key_type, "--out-key", key, "--out-cert", cert)
    assert again.code == errors.InputError.exit_code and "--force" in again.stderr
    sig = run_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", CERT_UUID)
    assert sig.code == 0, sig
    props = tmp_path / "p.json"
    props.write_text(sig.stdout)
    assert verify(image, props, cert).code == 0


def test_keygen_encrypted_key(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    assert run_cli("keygen", "--key-type", "RSA-PSS", "--out-key", key, "--out-cert", cert, "--passphrase-file", pw).code == 0
    assert b"ENCRYPTED" in key.read_bytes()
    image = tmp_path / "i"
    image.write_bytes(b"x" * 1000)
    assert run_cli("sign", image, "--key", key, "--cert-uuid", "x").code == errors.PrivateKeyError.exit_code
    assert run_cli("sign", image, "--key", key, "--cert-uuid", "x", "--passphrase-file", pw).code == 0


def test_keygen_refuses_non_ca_issuer(tmp_path):
    result = run_cli("keygen", "--no-encrypt", "--key-type", "RSA-PSS", "--out-key", tmp_path / "k", "--out-cert", tmp_path / "c",
                     "--ca-cert", pki("not-a-ca.pem"), "--ca-key", pki("not-a-ca.key"))
    assert result.code == errors.CertificateError.exit_code and "not a CA" in result.stderr, result
    assert not (tmp_path / "k").exists()


def test_keygen_of_the_largest_key_stops_on_ctrl_c(tmp_path):
    """A 16384-bit RSA key takes minutes; Ctrl-C (SIGINT) ends keygen at once, writing nothing."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "imgsign", "keygen", "--no-encrypt", "--key-type", "RSA-PSS",
                             "--bits", "16384",
                             "--out-key", tmp_path / "k.pem", "--out-cert", tmp_path / "c.pem"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # well into the prime search
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and "interrupted" in stderr, stderr
    assert "Traceback" not in stderr and not list(tmp_path.iterdir())


def test_version_names_the_crypto_it_runs_on():
    from cryptography import __version__ as cryptography_version

    result = run_cli("--version")
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("imgsign ") and lines[1].startswith(f"cryptography {cryptography_version} with OpenSSL")
    assert "openssl command" in lines[2] and "OpenSSL" in lines[2], result


@pytest.mark.parametrize("section, option, value", [
    ("imgsign", "max_chain_depth", "lots"), ("imgsign", "max_chain_depth", "256"), ("imgsign", "require_crls", "maybe"),
    ("transit", "timeout", "0"), ("transit", "timeout", "soon"),
])
def test_an_invalid_config_value_is_an_error_at_start_naming_the_option(tmp_path, section, option, value):
    """oslo.config checks a value only when something reads it: imgsign reads them all at start, so a command
    that never needs the option (`cert list`) refuses the file too, naming the option."""
    conf = tmp_path / "imgsign.conf"
    conf.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {tmp_path / 'ks'}\n\n"
                    f"[{section}]\n{option} = {value}\n")
    result = run_cli("-c", conf, "cert", "list")
    assert result.code == errors.InputError.exit_code, result
    assert f"invalid value for [{section}] {option}" in result.stderr, result


@pytest.mark.parametrize("missing", ["no-such.img", "a-directory"])
def test_sign_store_cert_stores_nothing_for_an_image_it_cannot_read(tmp_path, missing):
    (tmp_path / "a-directory").mkdir()
    env = {"IMGSIGN_CONFIG": str(tmp_path / "imgsign.conf")}
    (tmp_path / "imgsign.conf").write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\n"
                                           f"path = {tmp_path / 'ks.sqlite3'}\n")
    result = run_cli("sign", tmp_path / missing, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                     "--store-cert", env=env)
    assert result.code == errors.InputError.exit_code, result
    assert "stored certificate" not in result.stderr, result
    listed = run_cli("cert", "list", "--json", env=env)
    assert listed.code == 0 and json.loads(listed.stdout) == [], listed


def test_quiet_after_the_command_name_too(tmp_path):
    """`-q` after the command means what `imgsign -q COMMAND` means: no success messages, for keygen and for
    sign --store-cert's stored-certificate line."""
    env = {"IMGSIGN_CONFIG": str(tmp_path / "imgsign.conf")}
    (tmp_path / "imgsign.conf").write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\n"
                                           f"path = {tmp_path / 'ks.sqlite3'}\n")
    for where, args in (("before", ("-q", "keygen")), ("after", ("keygen", "-q"))):
        made = run_cli(*args, "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / f"{where}.key",
                       "--out-cert", tmp_path / f"{where}.pem", env=env)
        assert made.code == 0 and made.stderr == "", made
    image = tmp_path / "disk.img"
    image.write_bytes(b"data" * 1000)
    signed = run_cli("sign", image, "--key", tmp_path / "after.key", "--cert", tmp_path / "after.pem",
                     "--store-cert", "-q", env=env)
    assert signed.code == 0 and signed.stderr == "", signed
    loud = run_cli("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "loud.key",
                   "--out-cert", tmp_path / "loud.pem", env=env)
    assert loud.code == 0 and loud.stderr.startswith("imgsign: warning: "), loud  # -q: not even the warning
    assert loud.stderr.splitlines()[1].startswith("wrote "), loud
