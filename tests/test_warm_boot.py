"""The warm boot (a base unchanged since its last full check): what it skips, and what it still needs.

A fast-path entry of the verified-digest cache is bound to the digest of the very trust record whose
signature was verified when the entry was written; a warm boot then verifies neither the record's
signature nor the file's content again, and so loads no X.509 or signature stack (issue 21: the hook's
two calls of a warm boot under 100 ms).  Any other record, even one sealed with the right key, sends
the boot back to the full check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from imgsign import errors, load_certificate, load_private_key, sign
from imgsign.algorithms import HashMethod
from imgsign.compute.boot import BootPolicy, verify_for_boot
from imgsign.compute.image_cache import add_to_cache
from imgsign.compute.sealed import SealedStore
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.compute.verified_cache import VerifiedCache
from imgsign.policy import Policy
from tests.conftest import CERT_UUID, cert_of, key_of
from tests.test_boot_hook import HOOK, Host, domain_xml

DATA = os.urandom(3 * 1024 * 1024 + 5)
POLICY = BootPolicy(immutable_bases=True)

#: Modules a warm boot must not load: the signature and X.509 stack, the network and adoption stack.
HEAVY = ("cryptography", "imgsign.certificates", "imgsign.verifier", "imgsign.chain", "imgsign.keys",
         "imgsign.compute.self_adoption", "imgsign.compute.adoption", "oslo_config", "keystoneauth1",
         "requests", "urllib3", "castellan")


@pytest.fixture
def cached(tmp_path):
    """A sealed base in the image cache with its record: (base path, record store, cache)."""
    props = sign([DATA], load_private_key(key_of("RSA-PSS").read_bytes()), CERT_UUID, HashMethod.SHA256)
    records = RecordStore(str(tmp_path / "state"))
    add_to_cache([DATA], "img-1", props, load_certificate(cert_of("RSA-PSS").read_bytes()), records,
                 instances_path=str(tmp_path), policy=Policy(), immutable=True)
    base = str(tmp_path / "_base" / cache_name("img-1"))
    cache = VerifiedCache(records.state_dir)
    first = verify_for_boot(base, records, POLICY, cache)
    assert first.allowed and first.code == 0 and "unchanged" in first.message, first
    return base, records, cache


def test_a_record_whose_signature_fails_is_refused_even_with_a_warm_entry(cached):
    """Sealed with the right key (a bug, or a record written by another imgsign), but its signed digest
    carries no valid signature: the entry was written for another record, so the boot checks in full."""
    base, records, cache = cached
    record = records.get("img-1")
    assert record is not None
    records.put(dataclasses.replace(record, signed_digest=bytes(32)))
    decision = verify_for_boot(base, records, POLICY, cache)
    assert not decision.allowed and decision.code == errors.InvalidSignature.exit_code, decision


def test_another_valid_record_reads_the_file_again(cached):
    base, records, cache = cached
    record = records.get("img-1")
    assert record is not None
    records.put(dataclasses.replace(record, recorded_at="2020-01-01T00:00:00+00:00"))
    again = verify_for_boot(base, records, POLICY, cache)
    assert again.allowed and again.code == 0 and "in full" in again.message, again
    warm = verify_for_boot(base, records, POLICY, cache)
    assert warm.allowed and "unchanged" in warm.message, warm


def test_an_entry_that_names_no_record_is_not_a_fast_path(cached):
    """Entries written before the binding (no ``record``) cost one full read, then the fast path resumes."""
    base, records, cache = cached
    store = SealedStore(records.state_dir, "verified")
    body = store.read(cache_name("img-1"))
    assert body is not None and "record" in body
    del body["record"]
    store.write(cache_name("img-1"), body)
    again = verify_for_boot(base, records, POLICY, cache)
    assert again.allowed and "in full" in again.message, again
    assert "unchanged" in verify_for_boot(base, records, POLICY, cache).message


def _modules_of_hook(host: Host, instance: str, xml: str, operation: str, tmp_path) -> tuple[int, str, list[str]]:
    """Run the hook as libvirt does; the modules it had loaded when it exited."""
    out = tmp_path / f"modules-{operation}.json"
    # Only what the hook loads: an environment's sitecustomize (.ci/latest's strict warnings) loads its own.
    wrapper = ("import atexit, json, runpy, sys\n"
               "before = set(sys.modules)\n"
               f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(set(sys.modules) - before))))\n"
               f"sys.argv = [{str(HOOK)!r}] + sys.argv[1:]\n"
               f"runpy.run_path({str(HOOK)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, f"instance-{instance[:8]}", operation, "begin", "-"],
                          input=xml.encode(), capture_output=True, timeout=120,
                          env={**os.environ, "IMGSIGN_BOOT_CONFIG": str(host.config), "IMGSIGN_RUN_DIR": str(host.run_dir)})
    return proc.returncode, proc.stderr.decode(errors="replace"), json.loads(out.read_text())


def test_warm_hook_calls_load_no_signature_or_network_stack(tmp_path):
    host = Host(tmp_path)
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    first = host.boot(image_id, disk, instance)  # seals the base and writes its fast-path entry
    assert first.returncode == 0, first.stderr
    for operation in ("prepare", "start"):
        code, stderr, modules = _modules_of_hook(host, instance, xml, operation, tmp_path)
        assert code == 0, stderr
        loaded = [name for name in modules if name.startswith(HEAVY)]
        assert loaded == [], f"{operation} begin loaded {loaded[:8]}"
    last = host.log_entries()[-1]
    assert last["allowed"] and "unchanged since its last verification" in last["message"], last


def test_cold_hook_call_still_verifies_the_record(tmp_path):
    """The same hook with the entry gone: the record's signature is verified (the stack loads) and the
    whole base is read."""
    host = Host(tmp_path)
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    assert host.boot(image_id, disk, instance).returncode == 0
    VerifiedCache(str(host.state)).forget(cache_name(image_id))
    code, stderr, modules = _modules_of_hook(host, instance, xml, "prepare", tmp_path)
    assert code == 0, stderr
    assert "imgsign.verifier" in modules and "cryptography.x509" in modules
    assert "read and verified in full" in host.log_entries()[-1]["message"]


def test_the_modules_every_hook_call_loads_pay_for_no_logging_or_typing():
    """Every hook call imports these (redact, the snapshot reader, the record stores): :mod:`logging` (the
    ``--debug`` filter lives in debug_log) and :mod:`typing` would cost each call milliseconds."""
    probe = subprocess.run([sys.executable, "-c", "import sys\nbefore = set(sys.modules)\n"
                            "import imgsign.compute.libvirt_hook\n"
                            "print(sorted(m for m in ('logging', 'typing') if m in set(sys.modules) - before))"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert probe.stdout.strip() == "[]", probe


def test_a_warm_hook_call_under_a_trust_policy_decodes_no_yaml_and_parses_no_certificate(tmp_path):
    """[boot] policy_file is validated at every call, but its YAML is decoded, and its trust stores' certificate
    files parsed, only for contents the hook has not seen (boot_config.load_policy and certificate_fingerprints
    keep them beside boot.conf's snapshot): a warm call loads neither PyYAML nor X.509; an edit of the policy
    applies at the next call."""
    import shutil

    from tests.conftest import pki

    host = Host(tmp_path)
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    trust = tmp_path / "trust"
    trust.mkdir(mode=0o755)
    shutil.copyfile(pki("intermediate-ca.pem"), trust / "ca.pem")
    policy = trust / "policy.yaml"
    text = ("version: 1\ntrustStores:\n  ca: {certificates: [ca.pem]}\nrules:\n"
            "  - {name: all, scope: '*', level: LEVEL, trustStores: [ca], trustedIdentities: ['*']}\n")
    policy.write_text(text.replace("LEVEL", "audit"))  # the record names no anchor of the store: logged only
    host.config.write_text(host.config.read_text().replace("trusted_certificate_ids = \n", "")
                           + f"policy_file = {policy}\n")
    first = host.boot(image_id, disk, instance)
    assert first.returncode == 0, first.stderr
    for operation in ("prepare", "start"):
        code, stderr, modules = _modules_of_hook(host, instance, xml, operation, tmp_path)
        assert code == 0, stderr
        assert "yaml" not in modules, f"{operation} begin decoded the unchanged policy's YAML again"
        loaded = [name for name in modules if name.startswith(HEAVY)]
        assert loaded == [], f"{operation} begin loaded {loaded[:8]} (the stores' certificates parsed again?)"
    policy.write_text(text.replace("LEVEL", "strict"))
    code, stderr, modules = _modules_of_hook(host, instance, xml, "prepare", tmp_path)
    assert code == errors.UntrustedCertificate.exit_code, stderr
    assert "yaml" in modules
