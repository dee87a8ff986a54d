"""One configuration system (issue 20, "Configuring"): every file read by oslo.config with typed options.

* an invalid value of each option type is an error at start (exit 10) naming the option and the
  file, never quoting the value; so is a name in ``[boot]`` that is no option;
* boot.conf's dialect changed: oslo.config reads a comment only on a line of its own, so the old
  configparser habit ``mode = warn  # comment`` is refused (it used to be stripped);
* ``imgsign boot`` commands take their defaults from boot.conf, a flag overrides the file, and
  ``--trusted-id`` is a deprecated alias of ``--trusted``;
* the hook's validated snapshot of boot.conf is used only for the very file it was made from, and
  a warm call never imports oslo.config.
On main, ``mode = warn # x`` was read as warn, ``max_fast_path_age = lots`` in [boot] was refused by a
hand-written validator, a misspelt ``trusted_certificate_id`` was ignored (every signer trusted), and
``boot cache``/``check`` never read boot.conf.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsign import errors
from imgsign.compute import boot_config
from tests.conftest import cert_of, run_cli, seal_state
from tests.test_boot_hook import Host, domain_xml


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """The hook's snapshot directory for this test (root's /run/imgsign outside the tests)."""
    path = tmp_path / "run"
    monkeypatch.setenv(boot_config.ENV_RUN_DIR, str(path))
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- invalid values, per option type --------------------------------------------------------------------

INVALID = [
    ("mode", "maybe"),                                   # string with choices
    ("seal_bases", "frozen"),
    ("allow_unverified", "block, sideways"),             # list of choices
    ("trusted_certificate_ids", "good-id, bad id"),      # list of key-manager ids (no spaces)
    ("max_fast_path_age", "lots"),                       # seconds
    ("max_fast_path_age", "-1"),
    ("max_fast_path_age", "inf"),
    ("lock_timeout", "0"),                               # positive seconds
    ("lock_timeout", "nan"),
    ("adopt_timeout", ""),
    ("adopt", "maybe"),                                  # boolean
    ("adopt_by_conversion", "2"),
    ("adopt_conversion_max_size", "0"),                  # size in bytes
    ("adopt_conversion_max_size", "20 parsecs"),
    ("instances_path", "var/lib/nova/instances"),        # absolute paths
    ("state_dir", "./state"),
    ("log_file", "hook.log"),
]


@pytest.mark.parametrize("option, value", INVALID, ids=[f"{o}={v}" for o, v in INVALID])
def test_an_invalid_boot_value_is_refused_naming_the_option_and_the_file(tmp_path, run_dir, option, value):
    path = write(tmp_path / "boot.conf", f"[boot]\n{option} = {value}\n")
    with pytest.raises(errors.InputError) as raised:
        boot_config.load(str(path))
    message = raised.value.message
    assert f"invalid value for [boot] {option} in {path}: expected " in message, message
    if len(value.strip()) > 2:
        assert value.strip() not in message.replace(str(path), ""), message
    assert not run_dir.exists() or not list(run_dir.iterdir()), "an invalid file is never snapshotted"


@pytest.mark.parametrize("section, option, value", [
    ("imgsign", "max_chain_depth", "lots"), ("imgsign", "require_crls", "perhaps"), ("transit", "timeout", "0"),
    ("vault", "timeout", "soon"), ("glance", "timeout", "soon"), ("barbican", "number_of_retries", "many"),
])
def test_an_invalid_value_in_any_section_of_boot_conf_refuses_every_boot(tmp_path, section, option, value):
    """Adoption reads the key manager's and Glance's sections only when a base lacks a record: the hook checks
    them at start all the same, so a broken file is found before the day it is needed (on main,
    ``[imgsign] max_chain_depth = lots`` was accepted without a word while adoption was off)."""
    host = Host(tmp_path)
    host.config.write_text(host.config.read_text() + f"\n[{section}]\n{option} = {value}\n")
    result = host.hook("i", domain_xml(str(uuid.uuid4()), None, []))
    assert result.returncode == errors.InputError.exit_code, result.stderr
    assert f"invalid value for [{section}] {option} in {host.config}" in result.stderr, result.stderr


@pytest.mark.parametrize("exposure", ["file-group-writable", "file-not-root", "directory-not-root"])
def test_a_boot_conf_others_could_change_refuses_every_boot(tmp_path, exposure):
    """boot.conf sets the policy (mode = warn, trusted ids): on main any owner and mode was read as is."""
    host = Host(tmp_path)
    if exposure == "file-group-writable":
        host.config.chmod(0o664)
    elif exposure == "file-not-root":
        os.chown(host.config, 65534, 0)
    else:
        os.chown(tmp_path, 65534, 65534)
    result = host.hook("i", domain_xml(str(uuid.uuid4()), None, []))
    os.chown(tmp_path, 0, 0)
    assert result.returncode == errors.InsecureState.exit_code, result.stderr
    assert f"hook configuration {host.config}" in result.stderr and "only root" in result.stderr, result.stderr


def test_a_misspelt_boot_option_is_refused(tmp_path, run_dir):
    """``trusted_certificate_id`` (no s) used to be ignored: the hook then trusted every signer."""
    path = write(tmp_path / "boot.conf", "[boot]\ntrusted_certificate_id = ca-1\n")
    with pytest.raises(errors.InputError, match=r"\[boot\] has no option trusted_certificate_id"):
        boot_config.load(str(path))


def test_a_secret_in_a_broken_boot_conf_is_never_echoed(tmp_path):
    secret = "Hunter2-very-secret$value"
    host = Host(tmp_path)
    host.config.write_text(host.config.read_text() + f"adopt = true\n\n[glance]\nauth_type = password\n"
                           f"password = {secret}\n\n[vault]\ntimeout = {secret}\n")
    result = host.hook("i", domain_xml(str(uuid.uuid4()), None, []))
    assert result.returncode == errors.InputError.exit_code, result.stderr
    assert "[vault] timeout" in result.stderr, result.stderr
    assert "Hunter2" not in result.stderr and "very-secret" not in result.stderr, result.stderr


# --- the dialect: comments -----------------------------------------------------------------------------


def test_an_inline_comment_is_refused_with_a_hint_and_a_comment_line_is_fine(tmp_path, run_dir):
    """configparser (main) stripped ``# ...`` after a value; oslo.config keeps it in the value. A value it makes
    invalid is refused, saying why; a comment on a line of its own is a comment."""
    inline = write(tmp_path / "inline.conf", "[boot]\nmode = warn   # or enforce\n")
    with pytest.raises(errors.InputError) as raised:
        boot_config.load(str(inline))
    assert "[boot] mode" in raised.value.message and "comment only on a line of its own" in raised.value.message
    fine = write(tmp_path / "fine.conf", "[boot]\n# or enforce\nmode = warn\n")
    assert boot_config.load(str(fine)).mode == "warn"
    indented = write(tmp_path / "indented.conf", "[boot]\nmode = warn\n    # indented: a continuation line\n")
    with pytest.raises(errors.InputError, match="comment only on a line of its own"):
        boot_config.load(str(indented))


def test_a_dollar_is_written_twice(tmp_path, run_dir):
    """oslo.config substitutes ``$name``: a path with a '$' is written ``$$`` (configparser took it as is)."""
    path = write(tmp_path / "boot.conf", "[boot]\nlog_file = /var/log/imgsign/$$hook.log\n")
    assert boot_config.load(str(path)).log_file == "/var/log/imgsign/$hook.log"
    write(path, "[boot]\nlog_file = /var/log/imgsign/$hook.log\n")
    with pytest.raises(errors.InputError, match=r"\[boot\] log_file .*write \$\$ for a '\$'"):
        boot_config.load(str(path))


# --- the validated snapshot ----------------------------------------------------------------------------


def snapshots(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("boot-conf-*.json"))


def test_the_snapshot_is_root_only_and_used_for_the_same_file(tmp_path, run_dir):
    path = write(tmp_path / "boot.conf", "[boot]\nmode = warn\nlock_timeout = 30\n")
    first = boot_config.load(str(path))
    [snapshot] = snapshots(run_dir)
    assert snapshot.stat().st_mode & 0o777 == 0o600 and snapshot.stat().st_uid == 0
    assert run_dir.stat().st_mode & 0o077 == 0
    assert boot_config.load(str(path)) == first
    assert json.loads(snapshot.read_text())["settings"]["mode"] == "warn"


def _rewrite_keeping_size_and_times(path: Path, text: str) -> None:
    before = path.stat()
    assert len(text.encode()) == before.st_size
    with open(path, "r+") as handle:  # in place: same inode
        handle.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def test_a_same_size_same_mtime_rewrite_is_validated_again(tmp_path, run_dir):
    """mtime can be set back (``touch -d``), ctime and the content cannot: the snapshot of the old bytes is
    not used for the new ones, valid or not."""
    path = write(tmp_path / "boot.conf", "[boot]\nlock_timeout = 30\n")
    assert boot_config.load(str(path)).lock_timeout == 30
    _rewrite_keeping_size_and_times(path, "[boot]\nlock_timeout = 31\n")
    assert boot_config.load(str(path)).lock_timeout == 31
    _rewrite_keeping_size_and_times(path, "[boot]\nlock_timeout = xx\n")
    with pytest.raises(errors.InputError, match=r"\[boot\] lock_timeout"):
        boot_config.load(str(path))


@pytest.mark.parametrize("change", ["chmod", "chown", "replace", "touch"])
def test_any_change_to_boot_conf_is_validated_again(tmp_path, run_dir, change):
    path = write(tmp_path / "boot.conf", "[boot]\nmode = warn\n")
    boot_config.load(str(path))
    [snapshot] = snapshots(run_dir)
    key = json.loads(snapshot.read_text())["key"]
    if change == "chmod":
        path.chmod(0o600)
    elif change == "chown":
        os.chown(path, 0, 65534)
    elif change == "replace":
        write(tmp_path / "new.conf", "[boot]\nmode = warn\n").replace(path)
    else:
        os.utime(path, ns=(0, 0))
    boot_config.load(str(path))
    assert json.loads(snapshot.read_text())["key"] != key, "validated again, and the new key kept"


@pytest.mark.parametrize("flaw", ["file-0644", "file-not-root", "dir-group-writable", "symlink"])
def test_a_snapshot_others_could_have_written_is_ignored(tmp_path, run_dir, flaw):
    """A forged snapshot saying ``warn`` for a file that says ``enforce`` is used only if root alone could
    have written it (here it is forged by the test, as root, then exposed)."""
    path = write(tmp_path / "boot.conf", "[boot]\nmode = enforce\n")
    boot_config.load(str(path))
    [snapshot] = snapshots(run_dir)
    document = json.loads(snapshot.read_text())
    document["settings"]["mode"] = "warn"
    forged = json.dumps(document)
    snapshot.write_text(forged)
    assert boot_config.load(str(path)).mode == "warn"  # root-only: trusted (only root can write there)
    snapshot.write_text(forged)
    if flaw == "file-0644":
        snapshot.chmod(0o644)
    elif flaw == "file-not-root":
        os.chown(snapshot, 65534, 65534)
    elif flaw == "dir-group-writable":
        run_dir.chmod(0o770)
    else:
        elsewhere = tmp_path / "elsewhere.json"
        snapshot.replace(elsewhere)
        snapshot.symlink_to(elsewhere)
    assert boot_config.load(str(path)).mode == "enforce"


def test_another_files_snapshot_is_not_used(tmp_path, run_dir):
    one = write(tmp_path / "one.conf", "[boot]\nmode = warn\n")
    other = write(tmp_path / "other.conf", "[boot]\nmode = enforce\n")
    boot_config.load(str(one))
    [snapshot] = snapshots(run_dir)
    other_snapshot = boot_config._snapshot_path(str(other))
    Path(other_snapshot).write_text(snapshot.read_text())
    Path(other_snapshot).chmod(0o600)
    assert boot_config.load(str(other)).mode == "enforce"


def _modules_after_load(path: Path, run_dir: Path) -> list[str]:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom imgsign.compute.libvirt_hook import load_config\n"
         f"load_config({str(path)!r})\n"
         "print(sorted(m for m in ('oslo_config', 'castellan', 'keystoneauth1', 'stevedore') if m in sys.modules))"],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, boot_config.ENV_RUN_DIR: str(run_dir)})
    return json.loads(probe.stdout.replace("'", '"'))


def test_the_warm_path_does_not_import_oslo_config(tmp_path, run_dir):
    path = write(tmp_path / "boot.conf", "[boot]\nmode = warn\n\n[imgsign]\nmax_chain_depth = 4\n")
    assert "oslo_config" in _modules_after_load(path, run_dir)  # cold: validated in full
    assert _modules_after_load(path, run_dir) == []  # warm: the snapshot
    path.chmod(0o640)
    assert "oslo_config" in _modules_after_load(path, run_dir)  # changed: validated again


# --- commands take their defaults from boot.conf -------------------------------------------------------


@pytest.fixture
def signed(tmp_path):
    """A signed image and its properties: (image file, properties file)."""
    from tests.test_adoption import signed_image

    class Where:
        tmp = tmp_path

    return signed_image(Where, "raw")


def test_boot_cache_takes_its_defaults_from_boot_conf_and_a_flag_overrides_them(tmp_path, signed):
    source, props = signed
    instances, state = tmp_path / "from-file", tmp_path / "state-from-file"
    config = write(tmp_path / "boot.conf", f"[boot]\nseal_bases = owner\ninstances_path = {instances}\n"
                                           f"state_dir = {state}\n")
    image_id = str(uuid.uuid4())
    cached = run_cli("boot", "cache", source, "--image-id", image_id, "--properties", props, "--cert",
                     cert_of("RSA-PSS"), env={boot_config.ENV_PATH: str(config)})
    assert cached.code == 0, cached
    base = instances / "_base" / json.loads(cached.stdout)["name"]
    assert seal_state(base)[2] is False, "sealed as [boot] seal_bases = owner says: not immutable"
    assert (state / "records").is_dir()
    checked = run_cli("boot", "--boot-config", config, "check", base)
    assert checked.code == 0, checked

    other = str(uuid.uuid4())
    flagged = run_cli("boot", "--boot-config", config, "cache", source, "--image-id", other, "--properties", props,
                      "--cert", cert_of("RSA-PSS"), "--seal", "immutable")
    assert flagged.code == 0, flagged
    assert seal_state(instances / "_base" / json.loads(flagged.stdout)["name"])[2] is True, "--seal wins"


def test_boot_check_uses_the_files_trusted_ids_and_the_flag_overrides_them(tmp_path, signed):
    source, props = signed
    instances, state = tmp_path / "instances", tmp_path / "state"
    config = write(tmp_path / "boot.conf", f"[boot]\ninstances_path = {instances}\nstate_dir = {state}\n"
                                           "trusted_certificate_ids = some-ca\nseal_bases = owner\n")
    cached = run_cli("boot", "--boot-config", config, "cache", source, "--image-id", str(uuid.uuid4()),
                     "--properties", props, "--cert", cert_of("RSA-PSS"), "--trusted", "")
    assert cached.code == 2, "an empty --trusted is a usage error"
    cached = run_cli("boot", "cache", source, "--image-id", str(uuid.uuid4()), "--properties", props, "--cert",
                     cert_of("RSA-PSS"), "--instances-path", instances, "--state-dir", state, "--seal", "owner")
    assert cached.code == 0, cached
    base = instances / "_base" / json.loads(cached.stdout)["name"]
    untrusted = run_cli("boot", "--boot-config", config, "check", base)
    assert untrusted.code == errors.UntrustedCertificate.exit_code, untrusted
    assert "some-ca" in untrusted.stderr
    assert run_cli("boot", "--boot-config", config, "check", base, "--trusted", "other-ca").code == \
        errors.UntrustedCertificate.exit_code
    plain = write(tmp_path / "plain.conf", f"[boot]\nstate_dir = {state}\nseal_bases = owner\n")
    assert run_cli("boot", "--boot-config", plain, "check", base).code == 0


def test_trusted_id_is_a_deprecated_alias_of_trusted(tmp_path, signed):
    source, props = signed
    instances, state = tmp_path / "instances", tmp_path / "state"
    cached = run_cli("boot", "cache", source, "--image-id", str(uuid.uuid4()), "--properties", props, "--cert",
                     cert_of("RSA-PSS"), "--instances-path", instances, "--state-dir", state, "--seal", "owner")
    assert cached.code == 0, cached
    base = instances / "_base" / json.loads(cached.stdout)["name"]
    env = {boot_config.ENV_PATH: str(write(tmp_path / "boot.conf", "[boot]\nseal_bases = owner\n"))}
    old = run_cli("boot", "check", base, "--state-dir", state, "--trusted-id", "some-ca", env=env)
    new = run_cli("boot", "check", base, "--state-dir", state, "--trusted", "some-ca", env=env)
    assert old.code == new.code == errors.UntrustedCertificate.exit_code, (old, new)
    warnings = [line for line in old.stderr.splitlines() if "deprecated" in line]
    assert warnings == ["imgsign: warning: --trusted-id is deprecated, use --trusted"], old.stderr
    assert "deprecated" not in new.stderr
    assert "--trusted-id" not in run_cli("boot", "check", "--help").stdout


def test_a_missing_or_invalid_boot_conf_is_an_input_error_for_commands(tmp_path):
    missing = run_cli("boot", "--boot-config", tmp_path / "nope.conf", "check", tmp_path / "base")
    assert missing.code == errors.InputError.exit_code and "nope.conf does not exist" in missing.stderr, missing
    bad = write(tmp_path / "boot.conf", "[boot]\nmax_fast_path_age = lots\n")
    invalid = run_cli("boot", "check", tmp_path / "base", env={boot_config.ENV_PATH: str(bad)})
    assert invalid.code == errors.InputError.exit_code, invalid
    assert f"invalid value for [boot] max_fast_path_age in {bad}" in invalid.stderr


def test_the_glance_plugins_options_are_checked(tmp_path):
    from oslo_config import cfg

    from imgsign.conf import glance_import

    conf = cfg.ConfigOpts()
    for group, options in glance_import.list_opts():
        conf.register_opts(options, group=group)
    path = write(tmp_path / "glance-image-import.conf", "[imgsign_import]\nrequire_signature = sometimes\n")
    conf(args=[], default_config_files=[str(path)])
    with pytest.raises(errors.InputError, match=r"invalid value for \[imgsign_import\] require_signature"):
        glance_import.check(conf)


def test_the_snapshot_holds_every_boot_option():
    """A new [boot] option must reach the hook through the snapshot too (beside [nova], kept as written)."""
    assert {option.dest for option in boot_config.boot_opts()} | {"nova"} == set(boot_config._TYPES)



@settings(max_examples=200, deadline=None)
@given(values=st.dictionaries(st.sampled_from(sorted(boot_config._TYPES)) | st.text(max_size=8),
                              st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
                              | st.lists(st.text(max_size=5) | st.integers(), max_size=3), max_size=16))
def test_a_damaged_snapshot_is_ignored_never_an_error(values):
    """Snapshot parsing (root's own file, but it may be cut short or written by an older imgsign): anything that
    is not exactly the expected fields and types is ignored (the file is then validated again)."""
    result = boot_config._settings_of(values, "/etc/imgsign/boot.conf")
    assert result is None or isinstance(result, boot_config.BootSettings)
    if result is not None:
        assert all(0 <= value < float("inf") for value in (result.max_fast_path_age, result.lock_timeout))


def test_the_nova_section_reaches_the_hook_through_the_snapshot(tmp_path, monkeypatch):
    """[nova] (per-server trust) is checked when boot.conf is validated and kept in the snapshot, so a warm
    call knows it without oslo.config; a bad value is refused at start, naming the option."""
    from imgsign.compute import libvirt_hook

    path = write(tmp_path / "boot.conf", "[boot]\nmode = enforce\n\n[nova]\nauth_type = password\n"
                                         "trusted_certs_fallback = host\ntrusted_certs_timeout = 3\n")
    monkeypatch.setenv("IMGSIGN_RUN_DIR", str(tmp_path / "run"))
    first = libvirt_hook.load_config(str(path))
    again = libvirt_hook.load_config(str(path))  # from the snapshot now
    assert first.nova is not None and again.nova == first.nova
    assert (again.nova.fallback, again.nova.timeout) == ("host", 3.0)
    assert libvirt_hook.load_config(str(write(tmp_path / "plain.conf", "[boot]\n"))).nova is None
    bad = write(tmp_path / "bad.conf", "[nova]\nauth_type = password\ntrusted_certs_fallback = maybe\n")
    with pytest.raises(errors.InputError, match="trusted_certs_fallback"):
        libvirt_hook.load_config(str(bad))


def test_the_snapshot_keeps_no_nova_credential_but_follows_its_changes(tmp_path, monkeypatch):
    """[nova] holds keystoneauth's password: the snapshot in the run directory never does, yet the look-up's
    settings digest (which keeps or drops a cached token) still changes when the password changes."""
    from imgsign.compute import libvirt_hook

    monkeypatch.setenv("IMGSIGN_RUN_DIR", str(tmp_path / "run"))
    text = "[boot]\n\n[nova]\nauth_type = password\nusername = hook\npassword = {}\n"
    path = write(tmp_path / "boot.conf", text.format("s3cret-nova-passw0rd"))
    path.chmod(0o600)
    first = libvirt_hook.load_config(str(path))
    assert first.nova is not None
    snapshots = list((tmp_path / "run").glob("*.json"))
    for snapshot in snapshots:  # written only when run as root; then it must hold no credential
        assert b"s3cret-nova-passw0rd" not in snapshot.read_bytes()
    assert libvirt_hook.load_config(str(path)).nova == first.nova  # from the snapshot when there is one
    write(path, text.format("another-passw0rd"))
    assert libvirt_hook.load_config(str(path)).nova.digest != first.nova.digest
