"""Signing with keys in a PKCS#11 token: a real SoftHSM2 token in a temporary directory.

Every token key signs through ``imgsign sign --key pkcs11:...``; each signature is checked
by ``imgsign verify``, ``openssl dgst -verify`` and cursive.  Failures each have their exit
code, and the PIN appears in no output.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgsign import errors
from tests.conftest import assert_ca_key_issues_a_chain, cert_of, intermediate_ca_under_root, key_of, openssl, pki, run_cli
from tests.test_interop_cursive import run_cursive

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
           "/usr/lib64/pkcs11/libsofthsm2.so")
PIN = "pin-5310-visible-nowhere"
WRONG_PIN = "pin-9924-also-invisible"
TOKEN = "imgsign-test"
#: Key types SoftHSM2 generates, with the --bits each gets (RSA/DSA at 2048 to keep the tests fast).
TOKEN_KEYS = {"RSA-PSS": 2048, "DSA": 2048, "ECC_SECP384R1": None, "ECC_SECP521R1": None}
CERT_UUID = "5d9ff7b4-8f0e-4a57-b9b8-0c6b5d8e1a11"


def module_path() -> str:
    for path in MODULES:
        if os.path.isfile(path):
            return path
    if os.environ.get("CI"):
        pytest.fail("SoftHSM2 is not installed (.ci/run installs the softhsm2 package)")
    pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """A fresh SoftHSM2 token, its config, the PIN file and one key of each type made by `imgsign keygen`."""
    work = tmp_path_factory.mktemp("softhsm")
    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    module = module_path()
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "so-" + PIN],
                   check=True, capture_output=True, env={**os.environ, **env})
    pin_file = work / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    t = {"work": work, "env": env, "module": module, "pin_file": pin_file, "certs": {}}
    for key_type, bits in TOKEN_KEYS.items():
        cert = work / f"{key_type}.pem"
        result = run_cli("keygen", "--key-type", key_type, *(["--bits", bits] if bits else []),
                         "--key", uri(t, key_type), "--out-cert", cert, env=env)
        assert result.code == 0, result
        assert PIN not in result.stdout + result.stderr
        t["certs"][key_type] = cert
    return t


def uri(t, label, *, pin: str | None = None, query: str | None = None) -> str:
    """``pkcs11:token=...;object=LABEL?module-path=...&pin-source=file:...`` (or the given query)."""
    if query is None:
        query = f"module-path={t['module']}&" + (f"pin-value={pin}" if pin else f"pin-source=file:{t['pin_file']}")
    return f"pkcs11:token={TOKEN};object={label}" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("p11image") / "disk.img"
    path.write_bytes(os.urandom(2 * 1024 * 1024 + 77))
    return path


def sign(t, image, key, cert, *extra, env=None):
    return run_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", CERT_UUID, *extra,
                   env={**t["env"], **(env or {})})


def openssl_verifies(tmp_path, image, cert, props) -> bool:
    key_type, hash_name = props["img_signature_key_type"], props["img_signature_hash_method"]
    sig, pub = tmp_path / "sig.bin", tmp_path / "pub.pem"
    sig.write_bytes(base64.b64decode(props["img_signature"]))
    subprocess.run([openssl(), "x509", "-in", str(cert), "-pubkey", "-noout", "-out", str(pub)], check=True)
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max"] if key_type == "RSA-PSS" else []
    proc = subprocess.run([openssl(), "dgst", "-" + hash_name.replace("-", "").lower(), "-verify", str(pub), *pss,
                           "-signature", str(sig), str(image)], capture_output=True, text=True)
    return proc.returncode == 0 and "Verified OK" in proc.stdout


@pytest.mark.parametrize("key_type", list(TOKEN_KEYS))
@pytest.mark.parametrize("hash_name", ["SHA-256", "SHA-512"])
def test_token_signature_verifies_with_imgsign_and_openssl(token, image, tmp_path, key_type, hash_name):
    cert = token["certs"][key_type]
    result = sign(token, image, uri(token, key_type), cert, "--hash-method", hash_name, "-o", tmp_path / "p.json")
    assert result.code == 0, result
    props = json.loads((tmp_path / "p.json").read_text())
    assert props["img_signature_key_type"] == key_type
    verified = run_cli("verify", image, "--properties", tmp_path / "p.json", "--cert", cert)
    assert verified.code == 0, verified
    assert openssl_verifies(tmp_path, image, cert, props)
    tampered = tmp_path / "tampered.img"
    tampered.write_bytes(image.read_bytes()[:-1] + b"\0")
    assert not openssl_verifies(tmp_path, tampered, cert, props)
    assert run_cli("verify", tampered, "--properties", tmp_path / "p.json",
                   "--cert", cert).code == errors.InvalidSignature.exit_code


def test_token_signatures_verify_with_cursive(token, image, tmp_path):
    """Glance's and Nova's check: certificates stored with `sign --store-cert`, cursive verifies."""
    keystore = tmp_path / "keystore.sqlite3"
    config = tmp_path / "imgsign.conf"
    config.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n\n"
                      f"[imgsign]\nproject_id = demo\n")
    jobs = []
    for key_type, hash_name in zip(TOKEN_KEYS, ("SHA-224", "SHA-384", "SHA-224", "SHA-384"), strict=True):
        result = run_cli("--config", config, "sign", image, "--key", uri(token, key_type),
                         "--cert", token["certs"][key_type], "--store-cert", "--hash-method", hash_name,
                         env=token["env"])
        assert result.code == 0, result
        jobs.append({"image": str(image), "properties": result.json()})
    assert run_cursive({"work": tmp_path, "config": config}, jobs) == ["ok"] * len(jobs)


def test_pkcs11_settings_from_config(token, image, tmp_path):
    """module_path and pin_source in [pkcs11]: the URI names only the token and the key."""
    config = tmp_path / "imgsign.conf"
    config.write_text(f"[pkcs11]\nmodule_path = {token['module']}\npin_source = file:{token['pin_file']}\n")
    result = run_cli("--config", config, "sign", image, "--key", uri(token, "ECC_SECP384R1", query=""),
                     "--cert", token["certs"]["ECC_SECP384R1"], "--cert-uuid", CERT_UUID, env=token["env"])
    assert result.code == 0, result
    # every command that takes a key reference reads the same settings: cert request / issue / store
    request = run_cli("--config", config, "cert", "request", "--key", uri(token, "ECC_SECP384R1", query=""),
                      "--out", tmp_path / "signer.csr", env=token["env"])
    assert request.code == 0, request
    issued = run_cli("--config", config, "cert", "issue", "--key", uri(token, "ECC_SECP384R1", query=""),
                     "--out", tmp_path / "self.pem", env=token["env"])
    assert issued.code == 0, issued
    stored = run_cli("--config", config, "cert", "store", tmp_path / "self.pem", "--key",
                     uri(token, "ECC_SECP384R1", query=""), env={**token["env"], "IMGSIGN_KEYSTORE": str(tmp_path / "ks")})
    assert stored.code == 0, stored


def test_imported_key_signs_for_its_existing_certificate(token, image, tmp_path):
    """A key imported into the token (softhsm2-util, no public key object): the public half comes from the
    private key's own attributes; two keys with one label are ambiguous."""
    for key_id in ("0a01", "0a02"):
        _import(token, key_of("RSA-PSS"), "imported", key_id)
    ok = sign(token, image, uri(token, "imported").replace(";object=imported", ";object=imported;id=%0A%01"),
              cert_of("RSA-PSS"), "-o", tmp_path / "p.json")
    assert ok.code == 0, ok
    assert run_cli("verify", image, "--properties", tmp_path / "p.json", "--cert", cert_of("RSA-PSS")).code == 0
    ambiguous = sign(token, image, uri(token, "imported"), cert_of("RSA-PSS"))
    assert ambiguous.code == errors.SigningKeyNotFound.exit_code, ambiguous
    assert "2 private keys" in ambiguous.stderr and "id=" in ambiguous.stderr


def test_key_without_openstack_key_type(token, image):
    _import(token, pki("leaf-ecc-secp256r1.key"), "p256", "0b01", public=True)
    result = sign(token, image, uri(token, "p256"), cert_of("ECC_SECP384R1"))
    assert result.code == errors.UnsupportedAlgorithm.exit_code, result



def _import(token, key_file: Path, label: str, key_id: str, *, public: bool = False) -> None:
    """``softhsm2-util --import``: the private key, and a public key object only if ``public``."""
    subprocess.run(["softhsm2-util", "--import", str(key_file), "--token", TOKEN, "--label", label,  # noqa: S607
                    "--id", key_id, "--pin", PIN, *([] if public else ["--no-public-key"])],
                   check=True, capture_output=True, env={**os.environ, **token["env"]})


def test_binary_curve_key_with_its_certificate_on_the_token(token, image, tmp_path):
    """An ECC_SECT571K1 key whose public half is only a certificate object on the token (no public key
    object): imgsign reads it from the certificate; imgsign and openssl verify the signature."""
    _import(token, key_of("ECC_SECT571K1"), "sect", "0d01")
    _token_script(token, "from cryptography import x509; "
                         "c = x509.load_pem_x509_certificate(open(sys.argv[4], 'rb').read()); "
                         "from cryptography.hazmat.primitives.serialization import Encoding; A = pkcs11.Attribute; "
                         "s.create_object({A.CLASS: pkcs11.ObjectClass.CERTIFICATE, "
                         "A.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509, A.TOKEN: True, A.ID: b'\\x0d\\x01', "
                         "A.LABEL: 'sect', A.SUBJECT: c.subject.public_bytes(), A.VALUE: c.public_bytes(Encoding.DER)})",
                  cert_of("ECC_SECT571K1"))
    result = sign(token, image, uri(token, "sect"), cert_of("ECC_SECT571K1"), "--hash-method", "SHA-512",
                  "-o", tmp_path / "p.json")
    assert result.code == 0, result
    props = json.loads((tmp_path / "p.json").read_text())
    assert props["img_signature_key_type"] == "ECC_SECT571K1"
    assert run_cli("verify", image, "--properties", tmp_path / "p.json", "--cert", cert_of("ECC_SECT571K1")).code == 0
    assert openssl_verifies(tmp_path, image, cert_of("ECC_SECT571K1"), props)


def test_signature_that_does_not_verify_is_refused(token, image):
    """A public key object that does not belong to the private key with its id: the token's signature
    fails imgsign's local check, so nothing is emitted (46)."""
    _import(token, key_of("RSA-PSS"), "mismatch", "0e01")
    _token_script(token, "from cryptography import x509; A = pkcs11.Attribute; "
                         "n = x509.load_pem_x509_certificate(open(sys.argv[4], 'rb').read()).public_key()"
                         ".public_numbers(); "
                         "s.create_object({A.CLASS: pkcs11.ObjectClass.PUBLIC_KEY, A.KEY_TYPE: pkcs11.KeyType.RSA, "
                         "A.TOKEN: True, A.ID: b'\\x0e\\x01', A.LABEL: 'mismatch', A.VERIFY: True, "
                         "A.MODULUS: n.n.to_bytes(512, 'big').lstrip(b'\\0'), A.PUBLIC_EXPONENT: n.e.to_bytes(3, 'big')})",
                  pki("root-ca.pem"))
    result = run_cli("sign", image, "--key", uri(token, "mismatch"), "--cert-uuid", CERT_UUID, env=token["env"])
    assert result.code == errors.SignerRefused.exit_code, result
    assert "does not verify" in result.stderr and result.stdout == ""

def _failures(token, image, tmp_path):
    cert = token["certs"]["RSA-PSS"]
    no_pss = tmp_path / "no-pss.conf"
    # A token with RSA keys but only PKCS#1 v1.5 signatures, like many older smart cards.  (SoftHSM 2.6's
    # "-CKM_..." exclusion syntax is ignored, so the mechanisms it keeps are listed.)
    no_pss.write_text(Path(token["env"]["SOFTHSM2_CONF"]).read_text() + "slots.mechanisms = CKM_RSA_PKCS_KEY_PAIR_GEN,"
                      "CKM_RSA_PKCS,CKM_SHA256_RSA_PKCS,CKM_EC_KEY_PAIR_GEN,CKM_ECDSA\n")
    _token_script(token, "s.generate_keypair(pkcs11.KeyType.RSA, 2048, label='nosign', id=b'ns', store=True, "
                         "capabilities=pkcs11.MechanismFlag.DECRYPT | pkcs11.MechanismFlag.ENCRYPT)")
    return {
        "wrong PIN": (sign(token, image, uri(token, "RSA-PSS", pin=WRONG_PIN), cert),
                      errors.SignerLoginError, "wrong PIN"),
        "no PIN": (sign(token, image, uri(token, "RSA-PSS", query=f"module-path={token['module']}"), cert),
                   errors.SignerLoginError, "needs a PIN"),
        "missing object": (sign(token, image, uri(token, "no-such-key", pin=PIN), cert),
                           errors.SigningKeyNotFound, "has no private key"),
        "missing module": (sign(token, image, uri(token, "RSA-PSS", query=f"pin-value={PIN}&module-path=/nonexistent/"
                                                                           f"libp11.so"), cert),
                           errors.SignerUnavailable, "/nonexistent/libp11.so does not exist"),
        "absent token": (sign(token, image, uri(token, "RSA-PSS", pin=PIN).replace(TOKEN, "not-plugged-in"), cert),
                         errors.SignerUnavailable, "no PKCS#11 token matches"),
        "mechanism": (sign(token, image, uri(token, "RSA-PSS", pin=PIN), cert, env={"SOFTHSM2_CONF": str(no_pss)}),
                      errors.MechanismUnsupported, "CKM_RSA_PKCS_PSS"),
        "CKA_SIGN false": (sign(token, image, uri(token, "nosign", pin=PIN), cert),
                           errors.SignerRefused, "may not sign"),
        "export": (run_cli("key", "store", uri(token, "RSA-PSS", pin=PIN),
                           env={**token["env"], "IMGSIGN_KEYSTORE": str(tmp_path / "ks.sqlite3")}),
                   errors.PrivateKeyError, "cannot leave"),
        "bad URI": (sign(token, image, uri(token, "RSA-PSS", pin=PIN) + "&pin-value=x", cert),
                    errors.InputError, "given twice"),
    }


def test_failures_have_their_exit_codes_and_never_show_the_pin(token, image, tmp_path):
    for name, (result, error, text) in _failures(token, image, tmp_path).items():
        assert result.code == error.exit_code, (name, result)
        assert text in result.stderr, (name, result)
        output = result.stdout + result.stderr
        assert PIN not in output and WRONG_PIN not in output, (name, result)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result)


def test_missing_extra_names_it(token, image):
    """Without python-pkcs11 (hidden from the import system), a pkcs11: key says which extra to install."""
    code = ("import sys; sys.modules['pkcs11'] = None; sys.argv[0] = 'imgsign'; "
            "from imgsign.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "sign", str(image), "--key", uri(token, "RSA-PSS"),
                           "--cert-uuid", CERT_UUID], capture_output=True, text=True,
                          env={**os.environ, **token["env"]})
    assert proc.returncode == errors.MissingExtra.exit_code, proc.stderr
    assert "pip install 'imgsign[pkcs11]'" in proc.stderr and "Traceback" not in proc.stderr


def test_keygen_never_replaces_a_key(token, tmp_path):
    result = run_cli("keygen", "--key-type", "ECC_SECP384R1", "--key", uri(token, "ECC_SECP384R1"),
                     "--out-cert", tmp_path / "again.pem", env=token["env"])
    assert result.code == errors.InputError.exit_code, result
    assert "never replaces" in result.stderr and not (tmp_path / "again.pem").exists()


def test_keygen_refuses_a_binary_curve_before_making_the_key(token, tmp_path):
    result = run_cli("keygen", "--key-type", "ECC_SECT571K1", "--key", uri(token, "sect-new"),
                     "--out-cert", tmp_path / "sect.pem", env=token["env"])
    assert result.code == errors.UnsupportedAlgorithm.exit_code, result
    assert _token_script(token, "print(len(list(s.get_objects({pkcs11.Attribute.LABEL: 'sect-new'}))))").strip() == "0"


def test_generated_key_is_sensitive_and_not_extractable(token):
    out = _token_script(token, "[k] = s.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY, "
                               "pkcs11.Attribute.LABEL: 'ECC_SECP521R1'}); "
                               "print(k[pkcs11.Attribute.SENSITIVE], k[pkcs11.Attribute.EXTRACTABLE], "
                               "k[pkcs11.Attribute.SIGN], k[pkcs11.Attribute.DECRYPT], k[pkcs11.Attribute.DERIVE])")
    assert out.split() == ["True", "False", "True", "False", "False"]


def test_key_object_never_shows_the_pin(token, monkeypatch, caplog):
    """In-process: the key's repr, the parsed URI's repr and every log record leave the PIN out."""
    import logging

    from imgsign.algorithms import HashMethod
    from imgsign.keys.loading import open_signing_key
    from imgsign.keys.pkcs11 import parse_uri

    monkeypatch.setenv("SOFTHSM2_CONF", token["env"]["SOFTHSM2_CONF"])
    caplog.set_level(logging.DEBUG)
    reference = uri(token, "ECC_SECP384R1", pin=PIN)
    key = open_signing_key(reference)
    try:
        key.sign_digest(HashMethod.SHA384.new().digest(), HashMethod.SHA384)
        with pytest.raises(errors.PrivateKeyError):
            key.export_pkcs8_der()
        for text in (repr(key), repr(parse_uri(reference)), parse_uri(reference).describe(), caplog.text):
            assert PIN not in text
    finally:
        key.close()


def _token_script(token, statement: str, *args: object) -> str:
    """Run python-pkcs11 ``statement`` with ``s`` a logged-in read-write session, in a separate process;
    ``args`` are ``sys.argv[4:]``."""
    code = ("import pkcs11, sys; lib = pkcs11.lib(sys.argv[1]); t = lib.get_token(token_label=sys.argv[2]); "
            f"s = t.open(rw=True, user_pin=sys.argv[3])\n{statement}")
    proc = subprocess.run([sys.executable, "-c", code, token["module"], TOKEN, PIN, *map(str, args)],
                          capture_output=True, text=True,
                          env={**os.environ, **token["env"]}, check=True)
    return proc.stdout


def test_pipeline_resigns_with_a_token_service_key(token, image, tmp_path, monkeypatch):
    """imgsign_resign's key choice ([imgsign_import] service_key): the converted data is re-signed in the
    token, the result verifies with the service certificate, and the key is closed afterwards."""
    from imgsign.glance.pipeline import open_service_key, resign
    from imgsign.properties import SignatureProperties

    monkeypatch.setenv("SOFTHSM2_CONF", token["env"]["SOFTHSM2_CONF"])
    original = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID).json()
    stored: dict[str, bytes] = {}  # the key manager's keys: never read when service_key is set

    with pytest.raises(errors.PropertiesError, match="both"):
        open_service_key(uri(token, "ECC_SECP521R1"), "kid", stored.__getitem__)
    with pytest.raises(errors.PropertiesError, match="neither"):
        open_service_key(None, None, stored.__getitem__)
    key = open_service_key(uri(token, "ECC_SECP521R1"), None, stored.__getitem__)
    try:
        with open(image, "rb") as data:
            new = resign(data, key, CERT_UUID, SignatureProperties.from_mapping(original))
    finally:
        key.close()
    assert new is not None and new["img_signature_key_type"] == "ECC_SECP521R1"
    props = tmp_path / "resigned.json"
    props.write_text(json.dumps({k: v for k, v in new.items() if not k.startswith("imgsign_original_")}))
    assert run_cli("verify", image, "--properties", props, "--cert", token["certs"]["ECC_SECP521R1"]).code == 0


def test_an_rsa_key_in_the_token_is_a_ca_whose_certificates_chain(token, image, tmp_path, monkeypatch):
    """``keygen --ca-key pkcs11:...``: an intermediate CA whose RSA key is in the token issues a leaf that
    imgsign's chain validation accepts (CKM_RSA_PKCS over the DigestInfo: X.509 verifiers refuse an RSA
    issuer's RSASSA-PSS with the maximum salt)."""
    from imgsign.keys.loading import open_signing_key

    ca_uri = uri(token, "RSA-PSS")
    for name, value in token["env"].items():
        monkeypatch.setenv(name, value)
    key = open_signing_key(ca_uri)
    ca_pem = intermediate_ca_under_root(key.public_key().spki_der(), "CN=token intermediate CA",
                                        tmp_path / "token-ca.pem")
    key.close()
    assert_ca_key_issues_a_chain(lambda *args: run_cli(*args, env=token["env"]), ca_uri, ca_pem, image, tmp_path)
