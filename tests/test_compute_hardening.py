"""The compute side against its threat model (docs: security/threat-model.md): an attacker who can write what
the ``nova`` user, a guest's qemu or a shared ``_base`` can write, racing imgsign, never root.

The attacker runs as a real non-root process (a forked child that drops to uid 65534, the owner of
``_base`` here as ``nova`` owns it on a compute host); its writes, renames and memory mappings are
real filesystem operations.  Every test asserts on what the hook decides or what got recorded.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from imgsign import errors, load_certificate, load_private_key, sign
from imgsign.algorithms import HashMethod
from imgsign.compute import image_cache, image_format, qemu_img
from imgsign.compute.boot import BootPolicy, verify_for_boot
from imgsign.compute.image_cache import add_to_cache
from imgsign.compute.sealed import SealedStore
from imgsign.compute.trust_record import RecordStore, cache_name
from imgsign.compute.verified_cache import FileIdentity, VerifiedCache
from imgsign.policy import Policy
from tests.conftest import CERT_UUID, REPO, cert_of, key_of, run_cli
from tests.test_boot_hook import Host, domain_xml
from tests.test_real_images import qemu

NOBODY = 65534
INSECURE_STATE = 63  # errors.InsecureState.exit_code (a literal so these tests run on older trees too)


# --- the attacker: a real non-root process ----------------------------------------------------------

@pytest.fixture
def tmp_path():
    """A temporary directory the attacker (uid 65534) can reach (pytest's own is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="imgsign-hardening-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Attacker:
    """A forked child running as uid 65534 that performs steps on request (one call = one step)."""

    def __init__(self, *steps: Callable[[], None]) -> None:
        self._steps = list(steps)
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: drop root, then run each step when told
            code = 0
            try:
                os.close(self._to_child)
                os.close(self._from_child)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                for step in self._steps:
                    if os.read(to_child_r, 1) != b"s":
                        break
                    step()
                    os.write(from_child_w, b"k")
            except BaseException:  # noqa: BLE001 - report to the parent through the exit code
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(to_child_r)
        os.close(from_child_w)

    def step(self) -> None:
        os.write(self._to_child, b"s")
        assert os.read(self._from_child, 1) == b"k", "the attacker's step failed (see its traceback)"

    def finish(self) -> int:
        os.close(self._to_child)
        os.close(self._from_child)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def as_attacker(action: Callable[[], None]) -> None:
    attacker = Attacker(action)
    attacker.step()
    assert attacker.finish() == 0


def nova_writable_cache(instances: Path) -> Path:
    """The image cache as the install guide sets it up (\"The path to each base\"): instances path root's and
    sticky, ``_base`` root's, both writable by nova's group (nova here is uid/gid 65534)."""
    base = instances / "_base"
    base.mkdir(parents=True, exist_ok=True)
    os.chown(instances, 0, NOBODY)
    os.chmod(instances, 0o1775)
    os.chown(base, 0, NOBODY)
    os.chmod(base, 0o775)
    return base


def nova_owned_base(instances: Path) -> Path:
    """``_base`` as on a compute host: owned and writable by nova (here uid 65534)."""
    base = instances / "_base"
    base.mkdir(parents=True, exist_ok=True)
    os.chown(instances, NOBODY, NOBODY)
    os.chown(base, NOBODY, NOBODY)
    return base


def chunks(path: Path, size: int = 1 << 20):
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def signed_qcow2(tmp_path: Path, pattern: str = "0x4f", name: str = "src.qcow2"):
    """A real qcow2, its signature properties (RSA-PSS, SHA-256) and its raw conversion's bytes."""
    source = tmp_path / name
    qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "16M")
    qemu("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} 0 3M", "-c", "write -P 0x21 8M 1M", source)
    raw = tmp_path / (name + ".raw")
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", source, raw)
    props = sign(chunks(source), load_private_key(key_of("RSA-PSS").read_bytes()), CERT_UUID, HashMethod.SHA256)
    return source, props, raw.read_bytes()


def rsa_cert():
    return load_certificate(cert_of("RSA-PSS").read_bytes())


# --- 1. check by name, use by name: boot cache ------------------------------------------------------

def _swap_everything_in(base: Path, evil: bytes) -> Callable[[], None]:
    """The attacker's move: replace every file in ``_base`` it can see with its own bytes."""
    def swap() -> None:
        for entry in os.listdir(base):
            if entry.startswith(".evil"):
                continue
            mine = base / f".evil-{entry}"
            mine.write_bytes(evil)
            os.rename(mine, base / entry)
    return swap


@pytest.mark.parametrize("step", ["inspect", "convert", "link"])
def test_swapping_the_download_during_boot_cache_gets_no_record_for_unverified_bytes(tmp_path, monkeypatch, step):
    """At each step after the verification (format inspection, convert, placing the result), the
    attacker replaces every file in ``_base``: whatever is recorded and allowed is the verified image."""
    instances = tmp_path / "instances"
    base = nova_owned_base(instances)
    source, props, genuine = signed_qcow2(tmp_path)
    evil_source, _, evil_raw = signed_qcow2(tmp_path, pattern="0x66", name="evil.qcow2")
    evil = evil_source.read_bytes() if step == "inspect" else evil_raw
    swap = _swap_everything_in(base, evil)

    def at_step(real: Callable, before: bool):
        def wrapper(*args, **kwargs):
            if before:
                as_attacker(swap)
            result = real(*args, **kwargs)
            if not before:
                as_attacker(swap)
            return result
        return wrapper

    if step == "inspect":
        monkeypatch.setattr(image_format, "inspect_image", at_step(image_format.inspect_image, before=True))
    elif step == "convert":
        monkeypatch.setattr(qemu_img, "convert_to_raw", at_step(qemu_img.convert_to_raw, before=False))
    else:  # between giving the result a temporary name in _base and renaming it into place
        real = getattr(image_cache, "_link_temporary", None)
        if real is not None:
            monkeypatch.setattr(image_cache, "_link_temporary", at_step(real, before=False))
    records = RecordStore(str(tmp_path / "state"))
    try:
        add_to_cache(chunks(source), "img-1", props, rsa_cert(), records, instances_path=str(instances),
                     policy=Policy(), immutable=True)
    except errors.ImgsignError as exc:
        assert step == "link" and "replaced while it was being placed" in exc.message
    record = records.get("img-1")
    if record is not None:
        assert record.cached_sha256 == hashlib.sha256(genuine).digest(), "a record for bytes nobody verified"
    final = base / cache_name("img-1")
    decision = verify_for_boot(str(final), records, BootPolicy(immutable_bases=True),
                               VerifiedCache(records.state_dir))
    if decision.allowed:
        assert final.read_bytes() == genuine, "the hook allows bytes nobody signed"
        info = final.stat()
        assert info.st_uid == os.geteuid() and info.st_mode & 0o022 == 0
    else:
        assert step == "link" and decision.reason == "unsigned-image"


def test_base_file_is_root_owned_and_read_only_for_others(tmp_path):
    instances = tmp_path / "instances"
    nova_owned_base(instances)
    source, props, genuine = signed_qcow2(tmp_path)
    records = RecordStore(str(tmp_path / "state"))
    add_to_cache(chunks(source), "img-1", props, rsa_cert(), records, instances_path=str(instances),
                 policy=Policy(), immutable=True)
    final = instances / "_base" / cache_name("img-1")
    info = final.stat()
    assert final.read_bytes() == genuine and info.st_uid == 0 and info.st_mode & 0o7777 == 0o644
    assert sorted(os.listdir(instances / "_base")) == [cache_name("img-1")]  # no temporary file left


# --- 2. a label trusted instead of the key --------------------------------------------------------

@pytest.fixture
def keystore(tmp_path):
    return {"IMGSIGN_KEYSTORE": str(tmp_path / "keystore.sqlite3"), "IMGSIGN_CONFIG": "", "HOME": str(tmp_path)}


def test_other_certificate_under_a_trusted_id_is_not_trusted_at_boot(tmp_path, keystore):
    """``boot cache --cert other.pem`` with properties naming a trusted id must not make the hook trust
    the other certificate (``imgsign verify`` refuses the same image)."""
    host = Host(tmp_path)
    trusted_id = run_cli("cert", "store", cert_of("RSA-PSS"), env=keystore).stdout.strip()
    image_id = str(uuid.uuid4())
    source = tmp_path / "attacker.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "16M")
    props = tmp_path / "attacker.json"  # signed with another key, claiming the trusted certificate's id
    signed = run_cli("sign", source, "--key", key_of("ECC_SECP521R1"), "--cert-uuid", trusted_id, env=keystore)
    assert signed.code == 0, signed
    props.write_text(signed.stdout)
    assert run_cli("verify", source, "--properties", props, env=keystore).code in (
        errors.KeyTypeMismatch.exit_code, errors.InvalidSignature.exit_code)
    cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props, "--cert",
                     cert_of("ECC_SECP521R1"), "--instances-path", host.instances, "--state-dir", host.state,
                     env=keystore)
    assert cached.code == 0, cached
    host.configure("enforce", trusted=trusted_id)
    instance, disk = host.instance(image_id)
    refused = host.boot(image_id, disk, instance)
    assert refused.returncode == errors.UntrustedCertificate.exit_code, refused.stderr
    checked = run_cli("boot", "check", host.base(image_id), "--state-dir", host.state, "--trusted-id", trusted_id)
    assert checked.code == errors.UntrustedCertificate.exit_code, checked


def test_signer_fetched_under_a_trusted_id_is_trusted_at_boot(tmp_path, keystore):
    host = Host(tmp_path)
    trusted_id = run_cli("cert", "store", cert_of("RSA-PSS"), env=keystore).stdout.strip()
    image_id = str(uuid.uuid4())
    source = tmp_path / "good.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", source, "16M")
    props = tmp_path / "good.json"
    props.write_text(run_cli("sign", source, "--key", key_of("RSA-PSS"), "--cert-uuid", trusted_id).stdout)
    cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props,
                     "--instances-path", host.instances, "--state-dir", host.state, env=keystore)
    assert cached.code == 0, cached
    instance, disk = host.instance(image_id)
    host.configure("enforce", trusted=trusted_id)
    assert host.boot(image_id, disk, instance).returncode == 0
    host.configure("enforce", trusted=CERT_UUID)  # an id imgsign never fetched: bound to nothing
    assert host.boot(image_id, disk, instance).returncode == errors.UntrustedCertificate.exit_code


def test_record_of_an_older_version_is_refused_with_a_clear_message(tmp_path):
    instances = tmp_path / "instances"
    source, props, _ = signed_qcow2(tmp_path)
    records = RecordStore(str(tmp_path / "state"))
    add_to_cache(chunks(source), "img-1", props, rsa_cert(), records, instances_path=str(instances),
                 policy=Policy(), immutable=True)
    sealed = SealedStore(records.state_dir, "records")
    body = sealed.read(cache_name("img-1"))
    sealed.write(cache_name("img-1"), {**body, "version": 1, "trusted_ids": [CERT_UUID]})
    decision = verify_for_boot(str(instances / "_base" / cache_name("img-1")), records,
                               BootPolicy(immutable_bases=True))
    assert not decision.allowed and decision.reason == "trust-record-error"
    assert "version 1 is not supported" in decision.message and "imgsign boot cache" in decision.message


# --- 5. the fast path and writes that change no timestamp ---------------------------------------------

#: The fast path's own conditions, without the immutable flag (``[boot] seal_bases = owner``, or a
#: filesystem without the flag): what they must catch when a base can still be written.
OWNER_SEAL = BootPolicy(immutable_bases=False)


def _cached_image(tmp_path: Path, immutable: bool = False) -> tuple[Path, RecordStore, VerifiedCache, bytes]:
    instances = tmp_path / "instances"
    nova_owned_base(instances)
    source, props, genuine = signed_qcow2(tmp_path)
    records = RecordStore(str(tmp_path / "state"))
    add_to_cache(chunks(source), "img-1", props, rsa_cert(), records, instances_path=str(instances),
                 policy=Policy(), immutable=immutable)
    return instances / "_base" / cache_name("img-1"), records, VerifiedCache(records.state_dir), genuine


class Mapper:
    """Attacker steps around a shared writable mapping of ``path``: map it and dirty page 0 without
    changing a byte, then change a byte through the mapping (no mtime/ctime change: no page fault)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.map: mmap.mmap | None = None

    def map_and_dirty(self) -> None:
        fd = os.open(self.path, os.O_RDWR)
        self.map = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.map[0] = self.map[0]  # the page is now dirty and writable: later writes do not fault

    def change_a_byte(self) -> None:
        assert self.map is not None
        self.map[1] = self.map[1] ^ 0xFF


def _check_twice_around(base: Path, records: RecordStore, cache: VerifiedCache, attacker: Attacker):
    attacker.step()  # mapped and dirtied, content unchanged
    first = verify_for_boot(str(base), records, OWNER_SEAL, cache)
    assert first.allowed and "in full" in first.message, first
    before = FileIdentity.of(str(base))
    attacker.step()  # one byte changed through the mapping
    assert FileIdentity.of(str(base)) == before, "premise: the mmap write left size, mtime and ctime alone"
    second = verify_for_boot(str(base), records, OWNER_SEAL, cache)
    assert attacker.finish() == 0
    assert not second.allowed and second.reason == "invalid-signature", second


def test_mmap_write_to_a_replaced_base_is_caught(tmp_path):
    """The attacker replaces the base with its own copy of the same bytes and maps it writable: the
    hook seals the file (root's) but the mapping still writes it, so the boot is refused at once and
    the file given back; without that refusal the change through the mapping would come after the check."""
    base, records, cache, genuine = _cached_image(tmp_path)
    mapper = Mapper(base)

    def replace_and_map() -> None:
        copy = base.parent / ".copy"
        copy.write_bytes(genuine)
        os.rename(copy, base)
        mapper.map_and_dirty()

    attacker = Attacker(replace_and_map, mapper.change_a_byte)
    attacker.step()
    first = verify_for_boot(str(base), records, OWNER_SEAL, cache)
    assert not first.allowed and first.reason == "unsafe-image" and "open for writing" in first.message, first
    assert base.stat().st_uid == NOBODY, "a refused base is given back as it was"
    attacker.step()
    assert attacker.finish() == 0
    second = verify_for_boot(str(base), records, OWNER_SEAL, cache)
    assert not second.allowed and second.reason == "invalid-signature", second


def test_mmap_write_through_a_mapping_made_before_the_base_was_locked_again(tmp_path):
    """A root-owned 0644 base the attacker mapped writable while it was briefly mis-permissioned
    (chmod 0666 and back): permissions are checked only at open time, the mapping stays writable."""
    base, records, cache, _ = _cached_image(tmp_path)
    mapper = Mapper(base)
    os.chmod(base, 0o666)
    attacker = Attacker(mapper.map_and_dirty, mapper.change_a_byte)
    attacker.step()
    os.chmod(base, 0o644)
    assert base.stat().st_uid == 0

    first = verify_for_boot(str(base), records, OWNER_SEAL, cache)
    assert first.allowed and "in full" in first.message, first
    before = FileIdentity.of(str(base))
    attacker.step()
    assert FileIdentity.of(str(base)) == before
    second = verify_for_boot(str(base), records, OWNER_SEAL, cache)
    assert attacker.finish() == 0
    assert not second.allowed and second.reason == "invalid-signature", second


def test_writable_mapping_held_by_root_when_the_base_is_sealed(tmp_path):
    """Even a root process's shared writable mapping (the file is root's): the seal check sees it,
    nothing is remembered, and the change through the mapping is caught at the next boot."""
    base, records, cache, _ = _cached_image(tmp_path)
    mapper = Mapper(base)
    pid = os.fork()
    if pid == 0:  # a root "attacker": no setuid
        code = 1
        try:
            mapper.map_and_dirty()
            os.kill(os.getpid(), 19)  # SIGSTOP: wait for the parent
            mapper.change_a_byte()
            code = 0
        finally:
            os._exit(code)
    try:
        os.waitpid(pid, os.WUNTRACED)
        first = verify_for_boot(str(base), records, OWNER_SEAL, cache)
        assert first.allowed and "in full" in first.message, first
        before = FileIdentity.of(str(base))
    finally:
        os.kill(pid, 18)  # SIGCONT
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert FileIdentity.of(str(base)) == before, "premise: the mmap write left size, mtime and ctime alone"
    second = verify_for_boot(str(base), records, OWNER_SEAL, cache)
    assert not second.allowed and second.reason == "invalid-signature", second
    assert f"not remembered: mapped shared by process {pid}" in first.message


def test_fast_path_and_its_age_bound(tmp_path):
    base, records, cache, _ = _cached_image(tmp_path)
    assert "in full" in verify_for_boot(str(base), records, OWNER_SEAL, cache).message
    assert "unchanged" in verify_for_boot(str(base), records, OWNER_SEAL, cache).message
    too_old = verify_for_boot(str(base), records, BootPolicy(max_fast_path_age=0, immutable_bases=False), cache)
    assert too_old.allowed and "in full" in too_old.message
    os.utime(base)  # a touch (as Nova's image cache manager does) moves ctime: read once, then fast again
    assert "in full" in verify_for_boot(str(base), records, OWNER_SEAL, cache).message
    assert "unchanged" in verify_for_boot(str(base), records, OWNER_SEAL, cache).message


# --- 6. state trusted without checking who could write it -----------------------------------------------

MISINSTALLS = {
    "state dir owned by nova": lambda s: os.chown(s, NOBODY, NOBODY),
    "state dir world-writable": lambda s: os.chmod(s, 0o777),
    "records dir group-writable": lambda s: os.chmod(s / "records", 0o770),
    "key owned by nova": lambda s: os.chown(s / "hmac.key", NOBODY, NOBODY),
    "key readable by others": lambda s: os.chmod(s / "hmac.key", 0o644),
    "record owned by nova": lambda s: [os.chown(p, NOBODY, NOBODY) for p in (s / "records").iterdir()],
    "record group-writable": lambda s: [os.chmod(p, 0o620) for p in (s / "records").iterdir()],
    "cache entry owned by nova": lambda s: [os.chown(p, NOBODY, NOBODY) for p in (s / "verified").iterdir()],
}


@pytest.mark.parametrize("misinstall", sorted(MISINSTALLS))
def test_misinstalled_state_is_refused(tmp_path, misinstall):
    base, records, cache, _ = _cached_image(tmp_path)
    assert verify_for_boot(str(base), records, OWNER_SEAL, cache).allowed  # makes the cache entry
    MISINSTALLS[misinstall](Path(records.state_dir))
    decision = verify_for_boot(str(base), RecordStore(records.state_dir), OWNER_SEAL,
                               VerifiedCache(records.state_dir))
    assert not decision.allowed and decision.code == INSECURE_STATE, decision


def test_the_expected_owner_is_a_parameter(tmp_path):
    state = tmp_path / "state"
    SealedStore(str(state), "records").write("x", {"a": 1})
    for path in [state, *state.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    assert SealedStore(str(state), "records", owner=NOBODY).read("x") == {"a": 1}
    with pytest.raises(errors.ImgsignError) as refused:
        SealedStore(str(state), "records").read("x")
    assert refused.value.exit_code == INSECURE_STATE and "owned by uid 65534, not 0" in refused.value.message


def test_nova_forges_a_record_in_a_state_directory_it_owns(tmp_path):
    """The exploit behind the ownership checks: with the state directory owned by nova, nova replaces
    the key with its own and seals a record for its own bytes."""
    base, records, _, genuine = _cached_image(tmp_path)
    state = Path(records.state_dir)
    body = SealedStore(records.state_dir, "records").read(cache_name("img-1"))
    evil = bytes([genuine[0] ^ 0xFF]) + genuine[1:]
    forged = {**body, "source_format": "qcow2",
              "cached_file": {**body["cached_file"], "sha256": hashlib.sha256(evil).hexdigest()}}
    for path in [state, *state.rglob("*")]:  # the mis-install
        os.chown(path, NOBODY, NOBODY)

    def forge() -> None:
        os.unlink(state / "hmac.key")
        SealedStore(str(state), "records").write(cache_name("img-1"), forged)
        copy = base.parent / ".evil"
        copy.write_bytes(evil)
        os.rename(copy, base)

    as_attacker(forge)
    host = Host(tmp_path)
    host.instances, host.state = base.parent.parent, state
    host.configure("enforce")
    instance, disk = host.instance("img-1")
    result = host.hook(instance, domain_xml(instance, "img-1", [(disk, "qcow2")]))
    assert result.returncode == INSECURE_STATE, result.stderr
    assert "owned by uid 65534" in result.stderr


_WRITER = """
import sys
from imgsign.compute.sealed import SealedStore
state, name, ready = sys.argv[1:]
store = SealedStore(state, "records")
open(ready, "w").close()
while not __import__("os").path.exists(state + ".go"):
    __import__("time").sleep(0.0005)
store.write(name, {"who": name})
print(store.read(name)["who"], store.key(create=False).hex())
"""


def _concurrent_writers(state: Path, count: int) -> list[subprocess.CompletedProcess[str]]:
    """``count`` processes that seal a document into a fresh ``state`` at the same moment."""
    procs, readies = [], []
    for i in range(count):
        ready = state.parent / f"ready-{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", _WRITER, str(state), f"p{i}", str(ready)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)}))
    while not all(r.exists() for r in readies):
        time.sleep(0.01)
    Path(str(state) + ".go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_many_processes_creating_a_fresh_state_directory_at_once(tmp_path):
    state = tmp_path / "state"
    results = _concurrent_writers(state, 12)
    assert [r.returncode for r in results] == [0] * 12, [r.stderr for r in results if r.returncode]
    keys = {r.stdout.split()[1] for r in results}
    assert len(keys) == 1 and keys == {(state / "hmac.key").read_bytes().hex()}
    store = SealedStore(str(state), "records")
    assert sorted(store.read(f"p{i}")["who"] for i in range(12)) == sorted(f"p{i}" for i in range(12))
    assert sorted(os.listdir(state)) == ["hmac.key", "records"]


def test_stale_key_file_from_a_crash_does_not_block_the_state(tmp_path):
    state = tmp_path / "state"
    (state / "records").mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    (state / "hmac.key.new").write_bytes(os.urandom(32))  # a maker crashed before its link()
    os.chmod(state / "hmac.key.new", 0o600)
    store = SealedStore(str(state), "records")
    store.write("x", {"a": 1})
    assert SealedStore(str(state), "records").read("x") == {"a": 1}


def test_hook_config_max_fast_path_age_must_be_a_number(tmp_path):
    host = Host(tmp_path)
    host.config.write_text(host.config.read_text() + "max_fast_path_age = soon\n")
    result = host.hook(str(uuid.uuid4()), domain_xml(str(uuid.uuid4()), None, []))
    assert result.returncode == errors.InputError.exit_code and "max_fast_path_age" in result.stderr


def test_state_file_names_are_checked_before_any_path_is_built(tmp_path):
    store = SealedStore(str(tmp_path / "state"), "records")
    for bad in ("", "../x", ".hidden", "a/b", "nul\0"):
        with pytest.raises(errors.InputError):
            store.read(bad)


def test_boot_cache_into_an_insecure_state_directory_writes_nothing(tmp_path):
    source, props, _ = signed_qcow2(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(errors.ImgsignError) as refused:
        add_to_cache(chunks(source), "img-1", props, rsa_cert(), RecordStore(str(state)),
                     instances_path=str(tmp_path / "instances"), policy=Policy(), immutable=True)
    assert refused.value.exit_code == INSECURE_STATE
    assert not (tmp_path / "instances" / "_base").exists() or not os.listdir(tmp_path / "instances" / "_base")
