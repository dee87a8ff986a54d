"""Issue 20, item 6 (operating): ``--debug``, one ``-f/--format`` option, encrypted keys from ``keygen``.

Every command runs as a real process (:func:`tests.conftest.run_cli`); on main (173eb40) ``--debug`` and
``-f`` were unknown options (exit 2) and ``keygen`` wrote an unencrypted key without a word.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from imgsign import errors
from tests.conftest import cert_of, key_of, run_cli

CERT_ID = "00000000-0000-4000-8000-000000000001"


# --- --debug ---------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback_and_debug_log_and_keeps_the_exit_code(tmp_path, sample_image):
    missing = tmp_path / "missing.json"
    plain = run_cli("verify", sample_image, "--properties", missing)
    debug = run_cli("verify", sample_image, "--properties", missing, debug=True)
    assert plain.code == debug.code == errors.InputError.exit_code, (plain, debug)
    assert "Traceback (most recent call last)" in debug.stderr and "imgsign.errors.InputError" in debug.stderr, debug
    assert " DEBUG imgsign.cli: imgsign " in debug.stderr, debug
    assert debug.stderr.rstrip().endswith(plain.stderr.rstrip()), (plain, debug)  # the one line stays last
    assert plain.stdout == debug.stdout == ""


def test_imgsign_debug_variable_is_the_same_as_the_option(tmp_path, sample_image):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "imgsign", "verify", str(sample_image), "--properties",
                           str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "IMGSIGN_DEBUG": "1"})
    assert proc.returncode == errors.InputError.exit_code and "Traceback" in proc.stderr, proc.stderr
    off = subprocess.run([sys.executable, "-m", "imgsign", "verify", str(sample_image), "--properties",
                          str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "IMGSIGN_DEBUG": "0"})
    assert off.returncode == errors.InputError.exit_code and "Traceback" not in off.stderr, off.stderr


def test_debug_shows_an_internal_errors_traceback_scrubbed(tmp_path, sample_image):
    """A bug (here: key loading raising RuntimeError quoting the passphrase) gives its traceback under --debug,
    still without the passphrase, and exit 1 as without --debug."""
    import subprocess

    secret = "correct horse battery staple"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(secret + "\n")
    hook = tmp_path / "sitecustomize.py"
    hook.write_text("import imgsign.keys.loading as k\n"
                    "def boom(data, passphrase):\n    raise RuntimeError('bug near ' + passphrase.decode())\n"
                    "k.load_private_key = boom\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("IMGSIGN_DEBUG", None)
    args = ["sign", str(sample_image), "--key", str(key_of("RSA-PSS")), "--passphrase-file", str(passphrase),
            "--cert-uuid", CERT_ID]
    plain = subprocess.run([sys.executable, "-m", "imgsign", *args], capture_output=True, text=True, env=env,
                           timeout=120)
    debug = subprocess.run([sys.executable, "-m", "imgsign", "--debug", *args], capture_output=True, text=True,
                           env=env, timeout=120)
    assert plain.returncode == debug.returncode == 1, (plain.stderr, debug.stderr)
    assert "Traceback" not in plain.stderr and "--debug shows details" in plain.stderr, plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr and "RuntimeError: bug near" in debug.stderr
    assert "battery" not in plain.stderr + debug.stderr, debug.stderr


def test_debug_log_never_carries_a_request_body():
    """keystoneauth logs a request as ``curl ... -d '<body>'``: Barbican's carries the key or certificate
    stored, which no scrubber knows, so the filter drops every body; remembered secrets go as everywhere."""
    from imgsign._internal import redact

    redact.forget()
    redact.remember("s3cret-passw0rd")
    record = logging.LogRecord("keystoneauth.session", logging.DEBUG, __file__, 1,
                               "REQ: curl -g -i -X POST %s -H \"X-Auth-Token: {SHA256}ab\" -d '%s'",
                               ("http://127.0.0.1:9311/v1/secrets",
                                json.dumps({"payload": "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0t", "name": "k"})), None)
    assert redact.LogFilter().filter(record)
    text = record.getMessage()
    assert "LS0tLS1CRUdJTi" not in text and redact.OMITTED_BODY in text and "/v1/secrets" in text, text
    body = logging.LogRecord("keystoneauth.session", logging.DEBUG, __file__, 1, "RESP BODY: %s",
                             ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n",), None)
    redact.LogFilter().filter(body)
    assert "MIIEvQ" not in body.getMessage() and body.getMessage().startswith("RESP BODY: <omitted"), body.msg
    quoted = logging.LogRecord("x", logging.DEBUG, __file__, 1, "password is %s", ("s3cret-passw0rd",), None)
    redact.LogFilter().filter(quoted)
    assert "s3cret" not in quoted.getMessage()
    redact.forget()


# --- -f/--format -----------------------------------------------------------------------------------------------


@pytest.fixture
def signed(tmp_path, sample_image):
    """The sample image's properties (RSA-PSS, a fixed certificate id) in props.json."""
    made = run_cli("sign", sample_image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                   "--cert-uuid", CERT_ID, "-o", tmp_path / "props.json")
    assert made.code == 0, made
    return tmp_path / "props.json"


def test_sign_formats_show_the_same_properties(sample_image, signed):
    import yaml

    properties = json.loads(signed.read_text())
    args = ["sign", sample_image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"), "--cert-uuid", CERT_ID,
            "--no-raw-digest"]
    fixed = {k: v for k, v in properties.items() if k != "img_signature"}  # RSA-PSS signatures are randomised
    as_json = run_cli(*args, "-f", "json")
    as_yaml = run_cli(*args, "--format", "yaml")
    as_value = run_cli(*args, "-f", "value")
    as_table = run_cli(*args, "-f", "table")
    for result in (as_json, as_yaml, as_value, as_table):
        assert result.code == 0, result
    assert {k: v for k, v in json.loads(as_json.stdout).items() if k != "img_signature"} == fixed
    assert {k: v for k, v in yaml.safe_load(as_yaml.stdout).items() if k != "img_signature"} == fixed
    assert as_value.stdout.splitlines()[1:] == list(fixed.values())  # img_signature first, then the rest
    assert "| Field " in as_table.stdout and "| img_signature_key_type " in as_table.stdout, as_table
    assert "RSA-PSS" in as_table.stdout


def test_verify_formats_and_the_hidden_json_alias(sample_image, signed):
    import yaml

    args = ["verify", sample_image, "--properties", signed, "--cert", cert_of("RSA-PSS")]
    old = run_cli(*args, "--json")
    new = run_cli(*args, "-f", "json")
    assert old.code == new.code == 0, (old, new)
    assert old.stdout == new.stdout  # the same document, byte for byte
    document = json.loads(new.stdout)
    assert document["valid"] is True and document["exit_code"] == 0, document
    assert yaml.safe_load(run_cli(*args, "-f", "yaml").stdout) == document
    table = run_cli(*args, "-f", "table").stdout
    assert "| valid " in table and "| true " in table, table
    assert run_cli(*args, "-f", "value").stdout.splitlines()[:2] == [str(sample_image), "true"]
    assert "--json" not in run_cli("verify", "--help").stdout  # kept, not advertised
    clash = run_cli(*args, "--json", "-f", "yaml")
    assert clash.code == 2 and "--json and --format yaml" in clash.stderr, clash


def test_a_failed_verification_prints_its_document_in_every_format(tmp_path, sample_image, signed):
    import yaml

    other = tmp_path / "other.img"
    other.write_bytes(sample_image.read_bytes()[:-1] + b"\x00")
    args = ["verify", other, "--properties", signed, "--cert", cert_of("RSA-PSS")]
    for fmt, parse in (("json", json.loads), ("yaml", yaml.safe_load)):
        result = run_cli(*args, "-f", fmt)
        assert result.code == errors.InvalidSignature.exit_code, result
        document = parse(result.stdout)
        assert document["valid"] is False and document["exit_code"] == errors.InvalidSignature.exit_code
    value = run_cli(*args, "-f", "value")
    assert value.code == errors.InvalidSignature.exit_code and value.stdout.splitlines()[1] == "false", value


def test_store_and_list_commands_take_the_format_option(tmp_path):
    import yaml

    env = {"HOME": str(tmp_path), "IMGSIGN_KEYSTORE": str(tmp_path / "keystore.sqlite3")}
    stored = run_cli("cert", "store", cert_of("ECC_SECP384R1"), "-f", "json", env=env)
    assert stored.code == 0, stored
    cert_id = json.loads(stored.stdout)["id"]
    again = run_cli("cert", "store", cert_of("ECC_SECP384R1"), env=env)  # no -f: the bare id, as always
    assert again.stdout.strip() == cert_id, again
    listed_old = run_cli("cert", "list", "--json", env=env)
    listed_new = run_cli("cert", "list", "-f", "json", env=env)
    assert listed_old.stdout == listed_new.stdout and json.loads(listed_new.stdout)[0]["id"] == cert_id
    assert yaml.safe_load(run_cli("cert", "list", "-f", "yaml", env=env).stdout)[0]["id"] == cert_id
    value = run_cli("cert", "list", "-f", "value", env=env).stdout
    assert value.split()[0] == cert_id, value
    shown = run_cli("cert", "show", cert_id, "-f", "table", env=env)
    assert shown.code == 0 and f"| id " in shown.stdout and cert_id in shown.stdout, shown
    assert run_cli("cert", "show", cert_id, env=env).json()["id"] == cert_id  # default stays JSON
    key = run_cli("key", "store", key_of("RSA-PSS"), "-f", "value", env=env)
    assert key.code == 0, key
    keys = run_cli("key", "list", "-f", "json", env=env).json()
    assert [k["id"] for k in keys] == [key.stdout.strip()]
    crls = run_cli("crl", "list", "-f", "table", env=env)
    assert crls.code == 0 and crls.stdout == "", crls  # no rows: nothing, as OSC prints for an empty list


def test_a_format_whose_library_is_missing_fails_before_the_command_runs(tmp_path):
    """Without PyYAML (imgsign[formats]), ``-f yaml`` is a MissingExtra naming the extra, and nothing is stored."""
    import subprocess

    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['yaml'] = None\n")
    store = {"HOME": str(tmp_path), "IMGSIGN_KEYSTORE": str(tmp_path / "keystore.sqlite3")}
    env = {**os.environ, **store,
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("IMGSIGN_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "imgsign", "cert", "store", str(cert_of("RSA-PSS")), "-f", "yaml"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == errors.MissingExtra.exit_code, proc.stderr
    assert "imgsign[formats]" in proc.stderr and proc.stdout == "", proc.stderr
    listed = run_cli("cert", "list", "-f", "json", env=store)
    assert listed.json() == [], listed


# --- keygen encrypts by default --------------------------------------------------------------------------------


def test_keygen_without_a_passphrase_source_refuses_at_once_off_a_terminal(tmp_path):
    """No terminal to ask on, no --passphrase-file, no --no-encrypt: a usage error naming the choices, at once
    (stdin is a closed pipe here: nothing waits for input), and no file written."""
    import time

    start = time.monotonic()
    result = run_cli("keygen", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "k.pem", "--out-cert",
                     tmp_path / "c.pem", input="")
    assert result.code == 2, result
    assert "--passphrase-file" in result.stderr and "--no-encrypt" in result.stderr, result
    assert time.monotonic() - start < 60
    assert not (tmp_path / "k.pem").exists() and not (tmp_path / "c.pem").exists()


def test_keygen_no_encrypt_warns_in_one_line_and_passphrase_file_encrypts(tmp_path, sample_image):
    plain = run_cli("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "plain.pem",
                    "--out-cert", tmp_path / "plain-cert.pem", input="")
    assert plain.code == 0, plain
    warnings = [line for line in plain.stderr.splitlines() if line.startswith("imgsign: warning: ")]
    assert len(warnings) == 1 and "unencrypted" in warnings[0], plain.stderr
    assert b"-----BEGIN PRIVATE KEY-----" in (tmp_path / "plain.pem").read_bytes()
    quiet = run_cli("-q", "keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "q.pem",
                    "--out-cert", tmp_path / "q-cert.pem", input="")
    assert quiet.code == 0 and quiet.stderr == "", quiet  # -q: the user said so twice
    passphrase = tmp_path / "pw"
    passphrase.write_text("a passphrase of some length\n")
    encrypted = run_cli("keygen", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "enc.pem", "--out-cert",
                        tmp_path / "enc-cert.pem", "--passphrase-file", passphrase, input="")
    assert encrypted.code == 0 and "warning" not in encrypted.stderr and "encrypted" in encrypted.stderr, encrypted
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in (tmp_path / "enc.pem").read_bytes()
    signed = run_cli("sign", sample_image, "--key", tmp_path / "enc.pem", "--passphrase-file", passphrase,
                     "--cert", tmp_path / "enc-cert.pem", "--cert-uuid", CERT_ID, input="")
    assert signed.code == 0, signed
    both = run_cli("keygen", "--no-encrypt", "--passphrase-file", passphrase, "--key-type", "ECC_SECP384R1",
                   "--out-key", tmp_path / "x.pem", "--out-cert", tmp_path / "x-cert.pem", input="")
    assert both.code == 2 and "exclude each other" in both.stderr, both


def _on_a_terminal(args: list[str], answers: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``imgsign ARGS`` with a pseudo-terminal as its controlling terminal, answering each prompt once it
    is ready to read (getpass writes the prompt's last space after it turned echo off)."""
    import pty
    import select
    import signal
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.execve(sys.executable, [sys.executable, "-m", "imgsign", *args], env)
    output = b""
    deadline = time.monotonic() + 120
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal (EIO)
                break
            if not chunk:
                break
            output += chunk
            if pending and output.endswith(b": "):
                time.sleep(0.2)  # getpass has turned echo off and reads now
                os.write(fd, pending.pop(0).encode() + b"\n")
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode("utf-8", "replace")


def test_keygen_on_a_terminal_asks_twice_and_encrypts(tmp_path, sample_image):
    env = {k: v for k, v in os.environ.items() if k != "IMGSIGN_DEBUG"}
    secret = "typed at the terminal"
    code, shown = _on_a_terminal(["keygen", "--key-type", "ECC_SECP384R1", "--out-key", str(tmp_path / "k.pem"),
                                  "--out-cert", str(tmp_path / "c.pem")], [secret, secret], env)
    assert code == 0, shown
    assert shown.count("Passphrase for the new key") == 1 and "Repeat for confirmation" in shown, shown
    assert secret not in shown  # not echoed
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in (tmp_path / "k.pem").read_bytes()
    passphrase = tmp_path / "pw"
    passphrase.write_text(secret + "\n")
    signed = run_cli("sign", sample_image, "--key", tmp_path / "k.pem", "--passphrase-file", passphrase,
                     "--cert", tmp_path / "c.pem", "--cert-uuid", CERT_ID, input="")
    assert signed.code == 0, signed


def test_boot_check_takes_the_format_option_and_keeps_its_exit_code(tmp_path):
    import yaml

    base = tmp_path / "no-record-base"
    base.write_bytes(b"\x00" * 4096)
    args = ["boot", "check", base, "--state-dir", tmp_path / "state"]
    old = run_cli(*args, "--json")
    new = run_cli(*args, "-f", "json")
    assert old.code == new.code == errors.UnsignedImage.exit_code and old.stdout == new.stdout, (old, new)
    as_yaml = run_cli(*args, "-f", "yaml")
    assert as_yaml.code == errors.UnsignedImage.exit_code and yaml.safe_load(as_yaml.stdout) == new.json()
    value = run_cli(*args, "-f", "value")
    assert value.stdout.splitlines()[:2] == [str(base), "false"], value


def test_debug_log_filter_leaves_no_body_and_no_secret_whatever_the_text():
    """The filter parses log text that carries foreign content (URLs, bodies, Glance's names): whatever it is,
    a request body never survives and no long piece of a remembered secret does."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from imgsign._internal import redact

    @given(st.text(max_size=80), st.text(min_size=1, max_size=80), st.text(max_size=40),
           st.text(st.characters(blacklist_categories=("Cs",)), min_size=8, max_size=30))
    @settings(max_examples=300, deadline=None)
    def check(before: str, body: str, tail: str, secret: str) -> None:
        redact.forget()
        redact.remember(secret)
        message = f"REQ: curl -g -i -X POST {before} -d '{body}{tail}'"
        record = logging.LogRecord("keystoneauth.session", logging.DEBUG, __file__, 1, "%s", (message,), None)
        assert redact.LogFilter().filter(record)
        text = record.getMessage()
        # the body is replaced; or the whole line is cut when it shows key material (a PEM mark, even in the URL)
        # (then scrubbed as every line: a secret may even span the " -d '" itself)
        expected = {redact.scrub(f"REQ: curl -g -i -X POST {before} -d '{redact.OMITTED_BODY}'"),
                    redact.scrub("REQ: <omitted by imgsign: it holds key material>")}
        assert text in expected, (text, expected)
        said = logging.LogRecord("x", logging.DEBUG, __file__, 1, "%s %s %s", (before, secret, tail), None)
        redact.LogFilter().filter(said)
        cleaned = said.getMessage().replace(redact.MARK, "\x00")
        size = min(redact.PIECE_LENGTH, len(secret))
        assert not {secret[i:i + size] for i in range(len(secret) - size + 1)} & {
            cleaned[i:i + size] for i in range(len(cleaned) - size + 1)}, (secret, cleaned)

    try:
        check()
    finally:
        redact.forget()
