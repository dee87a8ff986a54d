"""Between the hook's check and qemu's open: the second check at ``start begin``, sealed (immutable)
bases, and the path to each base (docs, "Between the check and qemu's open")."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from imgsign import errors
from imgsign.compute import libvirt_hook, protection
from tests.conftest import cert_of, release, release_all, run_cli
from tests.test_boot_hook import Host, domain_xml
from tests.test_compute_hardening import NOBODY, Attacker, as_attacker, nova_writable_cache
from tests.test_real_images import qemu


@pytest.fixture
def host():
    """A host nova (uid 65534) can reach: instances path root's and sticky, ``_base`` root's and
    writable by nova's group (docs, "The path to each base")."""
    path = Path(tempfile.mkdtemp(prefix="imgsign-race-", dir="/tmp"))
    os.chmod(path, 0o755)
    host = Host(path)
    nova_writable_cache(host.instances)
    yield host
    release_all(path)
    shutil.rmtree(path, ignore_errors=True)


def immutable(path: Path) -> bool | None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return protection.is_immutable(fd)
    finally:
        os.close(fd)


def with_backing_store(xml: str, disk: Path, base: Path) -> str:
    """The XML as libvirt hands it to ``start begin``: the resolved chain in ``<backingStore>``."""
    chain = (f'<source file="{disk}" index="1"/>\n      <backingStore type="file" index="2">'
             f'<format type="raw"/><source file="{base}"/><backingStore/></backingStore>')
    return xml.replace(f'<source file="{disk}"/>', chain)


# --- the second check at start begin ----------------------------------------------------------------

def test_start_begin_checks_again_on_the_chain_libvirt_resolved(host):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    assert host.hook(instance, xml, "prepare", "begin").returncode == 0
    started = host.hook(instance, with_backing_store(xml, disk, host.base(image_id)), "start", "begin")
    assert started.returncode == 0, started.stderr
    entries = host.log_entries()
    assert len(entries) == 2 and all(e["allowed"] for e in entries)
    assert "unchanged since its last verification" in entries[-1]["message"]


@pytest.mark.parametrize("backing", ["/etc/passwd", 'json:{"file":{"driver":"file","filename":"/etc/passwd"}}'])
def test_a_header_nova_rewrites_after_prepare_is_refused_at_start(host, backing):
    """The race the second check closes: nova rewrites the overlay's backing name between the two
    hook calls (the overlay is nova's); at start begin the new chain is refused."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    os.chown(disk.parent, NOBODY, NOBODY)
    os.chown(disk, NOBODY, NOBODY)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    assert host.hook(instance, xml, "prepare", "begin").returncode == 0

    def rewrite() -> None:
        qemu("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing, "-F", "raw", disk)

    as_attacker(rewrite)
    refused = host.hook(instance, xml, "start", "begin")
    assert refused.returncode == errors.UnsafeImage.exit_code, refused.stderr
    assert "refusing to start" in refused.stderr


def test_start_begin_refuses_a_libvirt_chain_that_names_another_file(host):
    image_id, _ = host.image()
    other_id, _ = host.image(signed=False)
    instance, disk = host.instance(image_id)
    xml = domain_xml(instance, image_id, [(disk, "qcow2")])
    refused = host.hook(instance, with_backing_store(xml, disk, host.base(other_id)), "start", "begin")
    assert refused.returncode == errors.UnsignedImage.exit_code, refused.stderr


# --- sealed bases ---------------------------------------------------------------------------------------

def test_a_cached_base_is_sealed_against_nova_qemu_and_libvirts_chown(host):
    image_id, _ = host.image()
    base = host.base(image_id)
    info = base.stat()
    assert immutable(base) and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o644

    def nova_tries() -> None:  # nova owns _base, the directory the base is in
        for attempt in (lambda: os.open(base, os.O_RDWR), lambda: os.unlink(base),
                        lambda: os.rename(base, base.parent / "x"), lambda: os.link(base, base.parent / "y")):
            with pytest.raises(PermissionError):
                attempt()
        (base.parent / ".evil").write_bytes(b"evil")
        with pytest.raises(PermissionError):
            os.rename(base.parent / ".evil", base)

    as_attacker(nova_tries)
    with pytest.raises(PermissionError):  # libvirt's DAC labelling hands images to the qemu user: EPERM
        os.chown(base, NOBODY, NOBODY)
    with pytest.raises(PermissionError):  # not even root writes it without clearing the flag
        open(base, "r+b").close()
    assert base.stat().st_uid == 0
    instance, disk = host.instance(image_id)
    booted = host.boot(image_id, disk, instance)
    assert booted.returncode == 0, booted.stderr
    assert "unchanged since its last verification" in host.log_entries()[-1]["message"]


def test_a_base_libvirt_handed_to_qemu_is_sealed_again_then_fast(host):
    """A base sealed before immutable bases (or by `owner`): libvirt chowned it to the qemu user at a
    start; the next boot seals it through its descriptor, reads it once, then it is fast again."""
    image_id, _ = host.image()
    base = release(host.base(image_id))
    os.chown(base, NOBODY, NOBODY)
    instance, disk = host.instance(image_id)
    first = host.boot(image_id, disk, instance)
    assert first.returncode == 0, first.stderr
    assert "read and verified in full" in host.log_entries()[-1]["message"]
    assert immutable(base) and base.stat().st_uid == 0
    again = host.boot(image_id, disk, instance)
    assert again.returncode == 0 and "unchanged" in host.log_entries()[-1]["message"]


def test_a_writer_holding_a_base_when_the_hook_seals_it_is_refused(host):
    """The qemu user (owner of the base after libvirt's chown) keeps it open for writing: sealing cannot
    revoke that descriptor, so the boot is refused and the base handed back as it was."""
    image_id, _ = host.image()
    base = release(host.base(image_id))
    os.chown(base, NOBODY, NOBODY)
    held: list[int] = []
    attacker = Attacker(lambda: held.append(os.open(base, os.O_RDWR)), lambda: None)
    attacker.step()
    try:
        instance, disk = host.instance(image_id)
        refused = host.boot(image_id, disk, instance)
    finally:
        attacker.step()
        assert attacker.finish() == 0
    assert refused.returncode == errors.UnsafeImage.exit_code, refused.stderr
    assert "open for writing" in refused.stderr
    assert base.stat().st_uid == NOBODY and not immutable(base)


# --- the path to each base --------------------------------------------------------------------------------

def test_an_instances_path_nova_owns_is_refused(host):
    """Nova's default: instances_path in nova's home, nova's: it could rename _base away after the check."""
    image_id, _ = host.image()
    os.chown(host.instances, NOBODY, NOBODY)
    instance, disk = host.instance(image_id)
    refused = host.boot(image_id, disk, instance)
    assert refused.returncode == errors.InsecureState.exit_code, refused.stderr
    assert f"directory {host.instances} belongs to uid {NOBODY}" in refused.stderr
    host.configure("warn")
    warned = host.boot(image_id, disk, instance)
    assert warned.returncode == 0 and "WARNING" in warned.stderr


def test_with_owner_seals_base_must_be_root_sticky(host):
    """``seal_bases = owner``: bases are not immutable, so nova must not be able to rename them: a
    ``_base`` nova's group may write is refused unless it is sticky."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    host.config.write_text(host.config.read_text() + "seal_bases = owner\n")
    release(host.base(image_id))
    refused = host.boot(image_id, disk, instance)
    assert refused.returncode == errors.InsecureState.exit_code, refused.stderr
    assert "others may rename or replace" in refused.stderr
    os.chown(host.instances / "_base", 0, NOBODY)
    os.chmod(host.instances / "_base", 0o1775)
    allowed = host.boot(image_id, disk, instance)
    assert allowed.returncode == 0, allowed.stderr
    assert not immutable(host.base(image_id))


def test_a_filesystem_without_the_immutable_flag_is_refused_unless_owner(host, monkeypatch):
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    release(host.base(image_id))
    monkeypatch.setattr(protection, "set_immutable", lambda fd, on: False)
    monkeypatch.setattr(protection, "is_immutable", lambda fd: None)
    domain = libvirt_hook.parse_domain(domain_xml(instance, image_id, [(disk, "qcow2")]))
    config = libvirt_hook.load_config(str(host.config))
    results = libvirt_hook.decide(domain, config)
    refused = [decision for _, _, decision in results if not decision.allowed]
    assert [d.code for d in refused] == [errors.InsecureState.exit_code], results
    assert "could not be made immutable" in refused[0].message
    os.chown(host.instances / "_base", 0, NOBODY)
    os.chmod(host.instances / "_base", 0o1775)
    host.config.write_text(host.config.read_text() + "seal_bases = owner\n")
    results = libvirt_hook.decide(domain, libvirt_hook.load_config(str(host.config)))
    assert all(decision.allowed and decision.code == 0 for _, _, decision in results), results


def test_seal_bases_must_be_known(host):
    host.config.write_text(host.config.read_text() + "seal_bases = sometimes\n")
    with pytest.raises(errors.InputError, match=r"\[boot\] seal_bases in .*: expected one of immutable, owner"):
        libvirt_hook.load_config(str(host.config))


def test_boot_cache_seal_owner_leaves_the_flag_off(host):
    """``--seal owner`` (SELinux hosts): the base is root's and 0644 but not immutable, and nothing is
    primed (a later full read decides)."""
    image_id = host.image()[0]
    base = host.base(image_id)
    assert immutable(base)
    source = host.tmp / f"{image_id}.qcow2"
    again = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", host.tmp / f"{image_id}.json",
                    "--cert", cert_of("RSA-PSS"), "--instances-path", host.instances, "--state-dir", host.state,
                    "--seal", "owner")
    assert again.code == 0, again
    assert not immutable(base) and base.stat().st_uid == 0 and stat.S_IMODE(base.stat().st_mode) == 0o644
    checked = run_cli("boot", "check", base, "--state-dir", host.state, "--seal", "owner")
    assert checked.code == 0 and "read and verified in full" in checked.stdout, checked
    assert not immutable(base)


def test_the_hook_log_is_never_written_through_a_link(host, tmp_path):
    """root appends the decision log: a link planted at its name must not redirect that write."""
    image_id, _ = host.image()
    instance, disk = host.instance(image_id)
    target = tmp_path / "elsewhere"
    target.write_text("")
    host.log.parent.mkdir(parents=True, exist_ok=True)
    host.log.symlink_to(target)
    result = host.boot(image_id, disk, instance)
    assert result.returncode == 0 and "cannot write log" in result.stderr, result.stderr
    assert target.read_text() == ""


def test_release_gives_a_sealed_base_back_to_nova(host):
    """Nova's image cache manager cannot remove an immutable base; `boot release` gives it back (owner,
    flag, record), after which nova can remove it and booting from it again is a fresh decision."""
    import pwd

    image_id, _ = host.image()
    base = host.base(image_id)
    instance, disk = host.instance(image_id)
    assert immutable(base)
    as_attacker(lambda: pytest.raises(PermissionError, os.unlink, base))
    in_use = run_cli("boot", "release", image_id, "--owner", pwd.getpwuid(NOBODY).pw_name,
                     "--instances-path", host.instances, "--state-dir", host.state)
    assert in_use.code == errors.BaseBusy.exit_code and str(disk) in in_use.stderr, in_use
    assert immutable(base), "a base an instance uses is not released without --force"
    released = run_cli("boot", "release", image_id, "--force", "--owner", pwd.getpwuid(NOBODY).pw_name,
                       "--instances-path", host.instances, "--state-dir", host.state)
    assert released.code == 0 and "released" in released.stdout, released
    assert "WARNING" in released.stderr and str(disk) in released.stderr, released
    assert not immutable(base) and base.stat().st_uid == NOBODY
    refused = host.boot(image_id, disk, instance)
    assert refused.returncode == errors.UnsignedImage.exit_code, refused.stderr  # no record any more
    as_attacker(lambda: os.unlink(base))  # what Nova's image cache manager does
    assert not base.exists()
    unknown = run_cli("boot", "release", image_id, "--owner", "no-such-user-here", "--state-dir", host.state)
    assert unknown.code == 2, unknown
