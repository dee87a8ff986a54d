"""Signing with keys that never leave an OpenBao transit engine (``--key hashivault://NAME``).

One real OpenBao dev server for the module (:mod:`tests.servers.openbao`, https), with the transit engine
enabled and a token limited to it. Every key type transit offers that OpenStack can express signs
through transit, and the signature verifies with ``imgsign verify``, ``openssl dgst -verify`` and
cursive. The failures a deployment meets (wrong or missing token, missing key, a key that cannot
sign, a sealed or stopped server, a service that returns a bad signature) each end with their own
exit code and one line, and the token never appears in any output.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import certifi
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from imgsign import errors, keygen
from imgsign.algorithms import HashMethod, KeyType
from imgsign.certificates import load_certificate
from imgsign.keymanager import config as keymanager_config
from imgsign.keys.loading import generate_signing_key, open_signing_key
from imgsign.signer import Signer
from tests.conftest import CLIResult, assert_ca_key_issues_a_chain, intermediate_ca_under_root, openssl, pki, run_cli
from tests.servers import openbao
from tests.servers.common import free_port

pytestmark = pytest.mark.servers
# The module's OpenBao serves https with a certificate from its own CA (-dev-tls): every call is verified.

#: (transit key name, imgsign keygen arguments) for every key type OpenStack can express.
KEYS = {
    "rsa-2048": ["--key-type", "RSA-PSS", "--bits", "2048"],
    "rsa-3072": ["--key-type", "RSA-PSS", "--bits", "3072"],
    "rsa-4096": ["--key-type", "RSA-PSS", "--bits", "4096"],
    "ecdsa-p384": ["--key-type", "ECC_SECP384R1"],
    "ecdsa-p521": ["--key-type", "ECC_SECP521R1"],
}
CASES = [(k, h) for k in ("rsa-2048", "rsa-3072", "rsa-4096") for h in ("SHA-256", "SHA-384", "SHA-512")] + [
    ("rsa-3072", "SHA-224"), ("ecdsa-p384", "SHA-256"), ("ecdsa-p384", "SHA-384"), ("ecdsa-p521", "SHA-512"),
    ("ecdsa-p521", "SHA-224")]
#: Made or signed with the command line; the rest through the library (the same code, without a process each).
CLI_KEYGEN = ("rsa-3072", "ecdsa-p521")
CLI_CASES = (("rsa-2048", "SHA-512"), ("rsa-3072", "SHA-224"), ("rsa-4096", "SHA-256"), ("ecdsa-p384", "SHA-384"),
             ("ecdsa-p521", "SHA-512"))
SIGNER_POLICY = """
path "transit/keys/*" { capabilities = ["create", "read", "update"] }
path "transit/sign/*" { capabilities = ["update"] }
"""
NO_ENV = {"VAULT_ADDR": "", "VAULT_TOKEN": "", "BAO_ADDR": "", "BAO_TOKEN": "", "VAULT_NAMESPACE": "",
          "BAO_NAMESPACE": "", "VAULT_CACERT": "", "BAO_CACERT": "", "TRANSIT_SECRET_ENGINE_PATH": ""}


@dataclass
class Transit:
    server: openbao.OpenBaoServer
    token: str
    work: Path
    config: Path
    image: Path
    certs: dict[str, Path]
    uuids: dict[str, str]

    def env(self, **overrides: str) -> dict[str, str]:
        return {**NO_ENV, "VAULT_ADDR": self.server.url, "VAULT_TOKEN": self.token,
                "VAULT_CACERT": str(self.server.ca_file), **overrides}

    def run(self, *args: object, env: dict[str, str] | None = None) -> CLIResult:
        """``imgsign ARGS``; no token (the signer's or root's) in anything it prints."""
        result = run_cli(*args, env={**NO_ENV, "IMGSIGN_CONFIG": "", **(env or {})})
        for secret in (self.token, self.server.root_token):
            assert secret not in result.stdout + result.stderr, result
        return result


@pytest.fixture(scope="module")
def bao(tmp_path_factory) -> Iterator[Transit]:
    work = tmp_path_factory.mktemp("transit")
    with openbao.openbao_server(work / "server", tls=True) as server:
        server.api("POST", "sys/mounts/transit", {"type": "transit"})
        server.api("PUT", "sys/policies/acl/imgsign-signer", {"policy": SIGNER_POLICY})
        token = server.api("POST", "auth/token/create", {"policies": ["imgsign-signer"], "ttl": "2h"})["auth"][
            "client_token"]
        token_file = work / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        config = work / "imgsign.conf"
        config.write_text(f"[key_manager]\nbackend = imgsign\n[imgsign_embedded]\npath = {work / 'ks.sqlite3'}\n"
                          f"[transit]\naddress = {server.url}\ntoken_file = {token_file}\nca_file = {server.ca_file}\n"
                          f"timeout = 20\n")
        image = work / "disk.img"
        image.write_bytes(os.urandom(3 * 1024 * 1024 + 77))
        transit = Transit(server, token, work, config, image, {}, {})
        conf = keymanager_config.load(str(config))
        store = keymanager_config.open_store(conf)
        for name, args in KEYS.items():
            cert = work / f"{name}.pem"
            if name in CLI_KEYGEN:  # the command creates the key in transit, the CA issues its certificate
                made = transit.run("-c", config, "keygen", *args, "--key", f"hashivault://{name}", "--out-cert",
                                   cert, "--ca-cert", pki("intermediate-ca.pem"), "--ca-key",
                                   pki("intermediate-ca.key"), "--subject", f"CN=transit {name}")
                assert made.code == 0, made
            else:  # the same through the library, faster
                key = generate_signing_key(f"hashivault://{name}", KeyType.parse(args[1]),
                                           int(args[3]) if len(args) > 2 else None, conf=conf)
                cert.write_bytes(keygen.issue_certificate(keygen.parse_subject(f"CN=transit {name}"), key.public_key(),
                                                          _intermediate_ca()).public_bytes(Encoding.PEM))
            transit.certs[name] = cert
            der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
            transit.uuids[name] = store.store_certificate(der, f"transit {name}")
        yield transit


@pytest.fixture(scope="module")
def signed(bao: Transit) -> dict[tuple[str, str], dict[str, str]]:
    """The properties of the image signed through transit, per (key, hash method); settings from imgsign.conf."""
    properties = {}
    conf = keymanager_config.load(str(bao.config))
    for name, hash_method in CASES:
        if (name, hash_method) in CLI_CASES:
            result = bao.run("-c", bao.config, "sign", bao.image, "--key", f"hashivault://{name}", "--cert",
                             bao.certs[name], "--hash-method", hash_method)
            assert result.code == 0, result
            properties[(name, hash_method)] = result.json()
            continue
        key = open_signing_key(f"hashivault://{name}", conf=conf)
        assert key is not None and bao.token not in repr(key)
        method = HashMethod.parse(hash_method)
        signer = Signer(key, bao.uuids[name], method, certificate=load_certificate(bao.certs[name].read_bytes()))
        digest = method.new()
        digest.update(bao.image.read_bytes())
        properties[(name, hash_method)] = signer.sign_digest(digest.digest()).as_dict()
    return properties


def test_keys_were_created_in_transit_not_exportable(bao: Transit) -> None:
    for name in KEYS:
        data = bao.server.api("GET", f"transit/keys/{name}")["data"]
        assert data["type"] == name and data["exportable"] is False and data["latest_version"] == 1


@pytest.mark.parametrize("case", CASES, ids=[f"{k}-{h}" for k, h in CASES])
def test_signature_verifies_with_imgsign_and_openssl(bao: Transit, signed, case, tmp_path) -> None:
    name, hash_method = case
    props = signed[case]
    assert props["img_signature_hash_method"] == hash_method
    assert props["img_signature_certificate_uuid"] == bao.uuids[name]
    path = tmp_path / "props.json"
    path.write_text(json.dumps(props))
    verified = bao.run("verify", bao.image, "--properties", path, "--cert", bao.certs[name])
    assert verified.code == 0, verified
    signature = tmp_path / "sig"
    signature.write_bytes(base64.b64decode(props["img_signature"]))
    public = tmp_path / "pub.pem"
    subprocess.run([openssl(), "x509", "-in", str(bao.certs[name]), "-pubkey", "-noout", "-out", str(public)],
                   check=True)
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max"] if name.startswith("rsa") else []
    check = subprocess.run([openssl(), "dgst", "-" + hash_method.replace("-", "").lower(), "-verify", str(public),
                            *pss, "-signature", str(signature), str(bao.image)], capture_output=True, text=True)
    assert check.returncode == 0 and "Verified OK" in check.stdout, check


def test_cursive_verifies_transit_signatures(bao: Transit, signed, tmp_path) -> None:
    """As Nova and Glance do: the certificate fetched from the key manager by its uuid."""
    tampered = tmp_path / "tampered.img"
    data = bytearray(bao.image.read_bytes())
    data[4242] ^= 0x10
    tampered.write_bytes(data)
    jobs = [{"image": str(image), "properties": props, "project_id": "default"}
            for props in signed.values() for image in (bao.image, tampered)]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    host = Path(__file__).with_name("cursive_host.py")
    proc = subprocess.run([sys.executable, str(host), str(bao.config),
                           str(tmp_path / "jobs.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["ok", "InvalidSignature"] * len(signed)


def test_environment_settings_and_key_store_refusal(bao: Transit) -> None:
    """``VAULT_ADDR``/``VAULT_TOKEN`` alone are enough (OpenBao's ``BAO_*`` too); a transit key cannot be exported."""
    for env in (bao.env(), {"BAO_ADDR": bao.server.url, "BAO_TOKEN": bao.token, "BAO_CACERT": str(bao.server.ca_file)}):
        result = bao.run("sign", bao.image, "--key", "hashivault://ecdsa-p384", "--cert", bao.certs["ecdsa-p384"],
                         "--cert-uuid", bao.uuids["ecdsa-p384"], "--format", "env", env=env)
        assert result.code == 0 and "IMG_SIGNATURE=" in result.stdout, result
    stored = bao.run("-c", bao.config, "key", "store", "hashivault://rsa-2048")
    assert stored.code == errors.MechanismUnsupported.exit_code and "cannot be exported" in stored.stderr, stored


def _sign(bao: Transit, key: str = "rsa-2048", **env: str) -> CLIResult:
    return bao.run("sign", bao.image, "--key", f"hashivault://{key}", "--cert-uuid", "x", env=bao.env(**env))


def test_refusals_have_their_own_exit_codes(bao: Transit) -> None:
    bao.server.api("POST", "transit/keys/aes", {"type": "aes256-gcm96"})
    bao.server.api("POST", "transit/keys/ed", {"type": "ed25519"})
    cases = [
        ({"VAULT_TOKEN": "hvs.not-a-valid-token-at-all"}, "rsa-2048", errors.SignerLoginError, "refused the token"),
        ({"VAULT_TOKEN": ""}, "rsa-2048", errors.SignerLoginError, "no transit token"),
        ({}, "no-such-key", errors.SigningKeyNotFound, "no key 'no-such-key'"),
        ({"TRANSIT_SECRET_ENGINE_PATH": "elsewhere"}, "rsa-2048", errors.SignerLoginError, "refused the token"),
        ({"TRANSIT_SECRET_ENGINE_PATH": "elsewhere", "VAULT_TOKEN": bao.server.root_token}, "rsa-2048",
         errors.SigningKeyNotFound, "no transit engine is mounted at elsewhere"),
        ({}, "aes", errors.MechanismUnsupported, "aes256-gcm96"),
        ({}, "ed", errors.MechanismUnsupported, "Ed25519"),
        ({"VAULT_ADDR": f"http://127.0.0.1:{free_port()}"}, "rsa-2048", errors.SignerUnavailable, "cannot connect"),
        ({"VAULT_ADDR": "http://bao.example:8200"}, "rsa-2048", errors.InputError, "use an https:// address"),
    ]
    for env, key, error, text in cases:
        result = _sign(bao, key, **env)
        assert result.code == error.exit_code and text in result.stderr, (env, key, result)
        assert len(result.stderr.strip().splitlines()) == 1, result
    existing = bao.run("keygen", "--key-type", "RSA-PSS", "--key", "hashivault://rsa-2048", "--out-cert",
                       bao.work / "again.pem", "--ca-cert", pki("intermediate-ca.pem"), "--ca-key",
                       pki("intermediate-ca.key"), env=bao.env())
    assert existing.code == errors.InputError.exit_code and "already exists" in existing.stderr, existing


def test_sealed_server_is_unavailable(bao: Transit) -> None:
    unseal_key = re.search(r"Unseal Key: (\S+)", bao.server.log.read_text()).group(1)
    bao.server.api("PUT", "sys/seal")
    try:
        result = _sign(bao)
        assert result.code == errors.SignerUnavailable.exit_code and "sealed" in result.stderr, result
    finally:
        bao.server.api("PUT", "sys/unseal", {"key": unseal_key})
        deadline = time.monotonic() + 30
        while requests.get(f"{bao.server.url}/v1/sys/health", timeout=5, verify=bao.server.ca_file).status_code != 200:
            assert time.monotonic() < deadline, "OpenBao did not become active after unsealing"
            time.sleep(0.2)
    assert _sign(bao).code == 0


@contextlib.contextmanager
def tampering_proxy(upstream: str, mode: str, ca_file: Path) -> Iterator[str]:
    """A real HTTP proxy in front of OpenBao that spoils transit signing: ``flip`` changes a byte of the
    returned signature, ``salt`` asks transit for a hash-length PSS salt instead of imgsign's maximum."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if mode == "salt" and "/sign/" in self.path:
                body = json.dumps({**json.loads(body), "salt_length": "hash"}).encode()
            headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-vault")}
            answer = requests.request(self.command, upstream + self.path, data=body or None, headers=headers,
                                      timeout=20, verify=ca_file)
            content = answer.content
            if mode == "slow":
                time.sleep(4)
            if mode == "huge" and "/sign/" in self.path:
                content = b'{"data": {"signature": "vault:v1:' + b"A" * (2 * 1024 * 1024) + b'"}}'
            if mode == "flip" and "/sign/" in self.path and answer.status_code == 200:
                document = json.loads(content)
                prefix, _, value = document["data"]["signature"].rpartition(":")
                raw = bytearray(base64.b64decode(value))
                raw[len(raw) // 2] ^= 0x01
                document["data"]["signature"] = f"{prefix}:{base64.b64encode(raw).decode()}"
                content = json.dumps(document).encode()
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = _forward

        def log_message(self, *args: object) -> None:
            pass

    class Proxy(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # imgsign hanging up on a slow or oversized answer is the point

    proxy = Proxy(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("mode, key, text", [("flip", "rsa-2048", "does not match"),
                                             ("flip", "ecdsa-p384", "bad signature"),
                                             ("salt", "rsa-3072", "salt"),
                                             ("huge", "rsa-2048", "larger than")])
def test_a_bad_signature_from_the_service_is_never_emitted(bao: Transit, mode, key, text) -> None:
    with tampering_proxy(bao.server.url, mode, bao.server.ca_file) as address:
        result = _sign(bao, key, VAULT_ADDR=address)
    assert result.code == errors.SignerRefused.exit_code and text in result.stderr, result
    assert result.stdout == "", result


def test_a_slow_service_times_out(bao: Transit, tmp_path) -> None:
    config = tmp_path / "imgsign.conf"
    config.write_text(f"[transit]\naddress = {bao.server.url}\ntimeout = 1\n")
    with tampering_proxy(bao.server.url, "slow", bao.server.ca_file) as address:
        result = bao.run("-c", config, "sign", bao.image, "--key", "hashivault://rsa-2048", "--cert-uuid", "x",
                         env=bao.env(VAULT_ADDR=address))
    assert result.code == errors.SignerUnavailable.exit_code and "did not answer within 1 s" in result.stderr, result


def test_tls_is_verified_with_the_configured_ca(bao: Transit) -> None:
    """The server's certificate is from its own CA: refused without it, accepted with ``VAULT_CACERT`` even
    when ``REQUESTS_CA_BUNDLE`` names another bundle (requests lets that variable override a Session's CA)."""
    untrusted = _sign(bao, VAULT_CACERT="")
    assert untrusted.code == errors.SignerUnavailable.exit_code and "TLS connection" in untrusted.stderr, untrusted
    trusted = _sign(bao, REQUESTS_CA_BUNDLE=certifi.where())
    assert trusted.code == 0, trusted


def _intermediate_ca() -> keygen.Issuer:
    """The test PKI's intermediate CA, a key file (it signs certificates PKCS#1 v1.5)."""
    from imgsign.keys.loading import load_private_key

    return keygen.Issuer(load_certificate(pki("intermediate-ca.pem").read_bytes()),
                         load_private_key(pki("intermediate-ca.key").read_bytes()))


def test_an_rsa_key_in_transit_is_a_ca_whose_certificates_chain(bao: Transit, tmp_path: Path) -> None:
    """``keygen --ca-key hashivault://NAME``: an intermediate CA whose RSA key lives in transit issues a leaf
    that imgsign's chain validation accepts (an RSA issuer signs PKCS#1 v1.5 through transit, since X.509
    verifiers refuse RSASSA-PSS with the maximum salt)."""
    conf = keymanager_config.load(str(bao.config))
    ca_key = generate_signing_key("hashivault://ca-rsa", KeyType.RSA_PSS, 3072, conf=conf)
    ca_pem = intermediate_ca_under_root(ca_key.public_key().spki_der(), "CN=transit intermediate CA",
                                        tmp_path / "transit-ca.pem")
    assert_ca_key_issues_a_chain(lambda *args: bao.run("-c", bao.config, *args), "hashivault://ca-rsa", ca_pem,
                                 bao.image, tmp_path)
