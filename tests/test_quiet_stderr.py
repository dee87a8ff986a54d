"""On the happy path no command, and not the hook, prints anything on stderr but imgsign's own lines.

The test that failed when ``cryptography`` 51 deprecated DSA: every command printed its warning.  It
runs every command a DSA signer and a compute host use (DSA is the deprecated key type; the others
never warned), through ``cryptography``'s DSA and through the OpenSSL path, in subprocesses with
Python's default warning filters, exactly what a user sees.  ``.ci/latest`` runs it with the newest
versions the dependency ranges allow.  Every other command run by the suite goes through
``run_cli``, which refuses any Python warning on stderr too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import CERT_UUID, cert_of, key_of, pki, run_cli
from tests.test_boot_hook import Host, domain_xml
from tests.test_real_images import qemu

#: What imgsign itself may print on stderr on a happy path: its own prefixed lines, and the few plain
#: messages of commands that report what they wrote or stored.
OWN_LINE = re.compile(r"^(imgsign[:\s]|wrote |stored |generated |verified |deleted |OK\b|released |cached |"
                      r"adopted |allowed |\S+: (OK|allowed|verified))")


def only_own_lines(stderr: str) -> None:
    for line in stderr.splitlines():
        assert not line.strip() or OWN_LINE.match(line), f"not imgsign's own line on stderr: {line!r}\n{stderr}"


@pytest.fixture(params=["auto", "openssl"], ids=["cryptography-dsa", "openssl-dsa"])
def env(request, tmp_path) -> dict[str, str]:
    config = tmp_path / "imgsign.conf"
    config.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {tmp_path / 'ks.sqlite3'}\n")
    return {"IMGSIGN_DSA_BACKEND": request.param, "IMGSIGN_CONFIG": str(config)}


def ok(*args: object, env: dict[str, str]) -> str:
    result = run_cli(*args, env=env)
    assert result.code == 0, result
    only_own_lines(result.stderr)
    return result.stdout


def test_every_command_of_a_dsa_signer(env, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"\x42" * (1024 * 1024 + 7))
    key, cert = tmp_path / "dsa.key", tmp_path / "dsa.pem"
    ok("keygen", "--no-encrypt", "--key-type", "DSA", "--bits", "2048", "--out-key", key, "--out-cert", cert,
       "--ca-cert", pki("intermediate-ca.pem"), "--ca-key", pki("intermediate-ca.key"), env=env)
    ok("cert", "request", "--key", key, "--out", tmp_path / "dsa.csr", env=env)
    ok("cert", "issue", "--key", key, "--out", tmp_path / "self.pem", env=env)
    cert_id = ok("cert", "store", cert, env=env).strip()
    ok("cert", "list", env=env)
    ok("cert", "show", cert_id, env=env)
    ok("key", "store", key, env=env)
    ok("key", "list", env=env)
    ok("crl", "store", pki("intermediate-ca.crl.pem"), env=env)
    ok("crl", "list", env=env)
    props = tmp_path / "props.json"
    props.write_text(ok("sign", image, "--key", key, "--cert", cert, "--store-cert", env=env))
    ok("verify", image, "--properties", props, "--trusted-file", pki("root-ca.pem"),
       "--intermediate", pki("intermediate-ca.pem"), env=env)
    ok("verify", image, "--properties", props, "--cert", cert, "--json", env=env)
    for fmt in ("json", "openstack", "env"):
        ok("sign", image, "--key", key_of("DSA"), "--cert", cert_of("DSA"), "--cert-uuid", CERT_UUID,
           "--format", fmt, env=env)


def test_the_compute_host_commands_and_the_hook(env, tmp_path):
    host = Host(tmp_path)
    image_id = "5f8e6c1e-8a7e-4a38-9d1c-6b0d1b2a7c31"
    source = tmp_path / "source.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "64M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x4f 0 1M", source)
    props = tmp_path / "props.json"
    props.write_text(ok("sign", source, "--key", key_of("DSA"), "--cert-uuid", CERT_UUID, env=env))
    ok("boot", "cache", source, "--image-id", image_id, "--properties", props, "--cert", cert_of("DSA"),
       "--instances-path", host.instances, "--state-dir", host.state, env=env)
    base = host.base(image_id)
    ok("boot", "check", base, "--state-dir", host.state, env=env)
    instance, disk = host.instance(image_id)
    for operation in ("prepare", "start"):
        booted = host.hook(instance, domain_xml(instance, image_id, [(disk, "qcow2")]), operation,
                           env={**os.environ, **env})
        assert booted.returncode == 0, booted.stderr
        assert booted.stderr == "", booted.stderr
    ok("boot", "release", image_id, "--force", "--owner", "root", "--instances-path", host.instances,
       "--state-dir", host.state, env=env)  # the instance still uses it: --force, and its warning is imgsign's own
    assert Path(base).exists()


def test_quiet_is_exact_and_shared_by_threads():
    """Only the DSA deprecation is silenced, other warnings still show, and threads leave the filters as
    they found them (``audit --jobs`` verifies DSA images in threads)."""
    import threading
    import warnings

    from cryptography.utils import CryptographyDeprecationWarning

    from imgsign._internal import pyca_dsa
    from imgsign.certificates import certificate_public_key, load_certificate

    cert = load_certificate(cert_of("DSA").read_bytes())
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        start = threading.Barrier(8)

        def work() -> None:
            start.wait()
            for _ in range(50):
                certificate_public_key(cert)
                with pyca_dsa.quiet():
                    warnings.warn("DSA is deprecated (a test)", CryptographyDeprecationWarning, stacklevel=1)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with pyca_dsa.quiet():
            warnings.warn("another deprecation", CryptographyDeprecationWarning, stacklevel=1)
            warnings.warn("DSA is deprecated, said someone else", DeprecationWarning, stacklevel=1)
        warnings.warn("DSA is deprecated outside quiet()", CryptographyDeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another deprecation", "DSA is deprecated, said someone else",
                                              "DSA is deprecated outside quiet()"]
    assert warnings.filters == before
