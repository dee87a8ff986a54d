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
    quoted = logging.LogRecord("x", logging.DEBUG, __file__, 1, "password is %s", ("s3cret-passw0rd",), None)
    redact.LogFilter().filter(quoted)
    assert "s3cret" not in quoted.getMessage()
    redact.forget()
