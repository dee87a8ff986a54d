"""Issue 18, class 4: text from a service, an image, a certificate or a properties document never reaches the
operator's terminal, libvirt's start error or the hook's log with its control characters.

Every path runs as a real process (run_cli, the hook script) against a small HTTP server on 127.0.0.1 that
answers like Glance with hostile text. That server is a deliberate stand-in, kept minimal and in this file:
the full hostile-service harness (tests/servers/hostile.py, all services and every misbehaviour) is built on
another branch (h-net); these tests need only text in answers.

On main (1f59a47) each test of a path fails: Glance's error pages reached stderr with ESC, OSC 52 and bidi
characters (only whitespace was folded), certificate subjects were printed raw, and the hook's stderr carried
file names with line breaks.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign import errors
from tests.conftest import cert_of, key_of, pki, run_cli, serving

#: Every character a terminal or a reader could be fooled by: C0, DEL, C1, the format characters of the
#: BMP (bidi overrides and isolates, zero-width ones), line and paragraph separators, and whole sequences:
#: a window title, an OSC 52 clipboard write, a screen clear, a cursor move, a faked output line.
HOSTILE_CHARS = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]) + "".join(
    chr(c) for c in range(0xA0, 0x10000)
    if unicodedata.category(chr(c)) in ("Cf", "Zl", "Zp") or (unicodedata.category(chr(c)) == "Zs" and c != 0x20))
SEQUENCES = ("\x1b]0;pwned window title\x07", "\x1b]52;c;cHduZWQgY2xpcGJvYXJk\x07", "\x1b[2J\x1b[H",
             "\x9b31m", "\x1bP+q\x1b\\", "\r\nOK: image verified, signature valid\n", "\u202eOK\u202c",
             "\u2066evil\u2069", "\x00")
HOSTILE = "start " + "".join(SEQUENCES) + HOSTILE_CHARS + " end"
#: Hypothesis text: mostly the dangerous characters, with printable ones between them.
hostile_text = st.text(st.one_of(st.sampled_from(HOSTILE_CHARS), st.characters(blacklist_categories=("Cs",))),
                       min_size=1, max_size=120) | st.sampled_from(SEQUENCES)
CLI_RUNS = settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))


def is_safe_char(char: str) -> bool:
    """What may reach a terminal raw (imgsign._internal.untrusted.is_safe_char, spelled out here so that the
    process tests also run against main, which has no such module)."""
    return char.isprintable()


def assert_clean(text: str, *, first: str | None = "imgsign") -> None:
    """Nothing but printable characters and imgsign's own newlines; each line (from ``first``) imgsign's."""
    bad = sorted({c for c in text if c != "\n" and not is_safe_char(c)})
    assert not bad, f"raw unsafe characters {bad!r} in {text!r}"
    if first is not None:
        for line in text.splitlines():
            assert line.startswith(first), f"a line imgsign did not write: {line!r} in {text!r}"


# --- the cleaner itself -----------------------------------------------------------------------------


@given(st.text())
@settings(max_examples=500)
def test_safe_shows_every_unsafe_character_as_an_escape_and_is_idempotent(text):
    from imgsign._internal.untrusted import safe

    cleaned = safe(text)
    assert all(is_safe_char(c) for c in cleaned)
    assert safe(cleaned) == cleaned
    kept = safe(text, newlines=True)
    assert all(is_safe_char(c) or c == "\n" for c in kept) and kept.count("\n") == text.count("\n")
    if all(c.isprintable() for c in text):
        assert cleaned == text  # printable text, non-ASCII names included, is left alone


def test_safe_spells_escapes_visibly():
    from imgsign._internal.untrusted import safe

    assert safe("a\x1b]0;t\x07\n\u202eb\U000e0001") == "a\\x1b]0;t\\x07\\n\\u202eb\\U000e0001"
    assert all(is_safe_char(c) for c in safe(HOSTILE))


@given(st.text())
@settings(max_examples=200)
def test_error_messages_are_clean_whoever_builds_them(text):
    for error in errors.ALL_ERRORS:
        message = error(f"prefix {text} suffix").message
        assert all(is_safe_char(c) for c in message)


@given(st.lists(st.text(), max_size=5))
@settings(max_examples=200)
def test_a_safe_stream_keeps_only_newlines(pieces):
    import io

    from imgsign._internal.untrusted import SafeStream

    under = io.StringIO()
    stream = SafeStream(under, scrub=lambda text: text)
    for piece in pieces:
        stream.write(piece)
    assert all(is_safe_char(c) or c == "\n" for c in under.getvalue())
    assert under.getvalue().count("\n") == sum(p.count("\n") for p in pieces)


def test_scrub_is_a_no_op_without_secrets():
    from imgsign._internal.redact import scrub

    assert scrub(HOSTILE, []) == HOSTILE


# --- a hostile Glance ------------------------------------------------------------------------------


class HostileGlance:
    """Answers every request from ``answers``: ``(method, path prefix) -> (status, body, content type)``;
    the longest matching prefix wins, anything else is a 404 with the hostile text as its page."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, bytes, str]] = {}
        self.url = ""

    def answer(self, method: str, prefix: str, status: int, body: Any) -> None:
        if isinstance(body, (dict, list)):
            self.answers[(method, prefix)] = (status, json.dumps(body).encode(), "application/json")
        else:
            data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
            self.answers[(method, prefix)] = (status, data, "text/html; charset=UTF-8")


@contextlib.contextmanager
def hostile_glance() -> Iterator[HostileGlance]:
    glance = HostileGlance()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            matches = [(len(p), key) for key in glance.answers for p in [key[1]]
                       if key[0] == self.command and self.path.startswith(p)]
            status, body, kind = (glance.answers[max(matches)[1]] if matches
                                  else (404, HOSTILE.encode(), "text/html; charset=UTF-8"))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _reply

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as glance.url:
        yield glance


@pytest.fixture(scope="module")
def glance() -> Iterator[HostileGlance]:
    with hostile_glance() as server:
        yield server


@pytest.fixture(scope="module")
def cloud_env(glance, tmp_path_factory) -> dict[str, str]:
    """A clouds.yaml naming the hostile Glance (keystoneauth's admin_token: a token and the endpoint), and a
    home and keystore of the test's own."""
    root = tmp_path_factory.mktemp("hostile-cloud")
    clouds = root / "clouds.yaml"
    clouds.write_text(json.dumps({"clouds": {"hostile": {"auth_type": "admin_token",
                                                         "auth": {"endpoint": glance.url, "token": "t"}}}}))
    return {"OS_CLIENT_CONFIG_FILE": str(clouds), "OS_CLOUD": "hostile", "HOME": str(root),
            "IMGSIGN_KEYSTORE": str(root / "keystore.sqlite3"), "IMGSIGN_CONFIG": ""}


IMAGE_ID = "5f1b7c2e-55d2-4a43-9a8e-0d9c1f0b6a11"


def run_glance_case(glance: HostileGlance, env: dict[str, str], text: str, case: str):
    """Set up the hostile answers of ``case`` with ``text`` and run the command that meets them."""
    glance.answers.clear()
    if case == "verify-error-page":
        glance.answer("GET", f"/v2/images/{IMAGE_ID}", 500, f"<html><title>{text}</title>{text}</html>")
        return run_cli("verify", "--image", IMAGE_ID, env=env), errors.GlanceUnavailable.exit_code
    if case == "verify-not-found":
        glance.answer("GET", f"/v2/images/{IMAGE_ID}", 404, text)
        return run_cli("verify", "--image", IMAGE_ID, env=env), errors.ImageNotFound.exit_code
    if case == "verify-record":
        glance.answer("GET", f"/v2/images/{IMAGE_ID}", 200, {
            "id": IMAGE_ID, "name": text, "status": "active", "size": 3,
            "img_signature": "AAAA", "img_signature_hash_method": text, "img_signature_key_type": "RSA-PSS",
            "img_signature_certificate_uuid": text})
        return run_cli("verify", "--image", IMAGE_ID, env=env), (errors.PropertiesError.exit_code,
                                                                 errors.UnsupportedAlgorithm.exit_code)
    if case == "audit-error-page":
        glance.answer("GET", "/v2/images", 503, text)
        return run_cli("audit", env=env), errors.GlanceUnavailable.exit_code
    if case == "audit-records":
        glance.answer("GET", "/v2/images", 200, {"images": [
            {"id": text, "name": text, "status": text, "owner": text, "img_signature": text,
             "img_signature_hash_method": "SHA-256", "img_signature_key_type": "RSA-PSS",
             "img_signature_certificate_uuid": CERT_ID},
            {"id": IMAGE_ID, "name": text, "status": "active"}]})
        return run_cli("audit", env=env), errors.PolicyViolation.exit_code
    if case == "audit-next-page":
        glance.answer("GET", "/v2/images", 200, {"images": [], "next": f"/v2/other{text}"})
        return run_cli("audit", env=env), errors.GlanceUnavailable.exit_code
    if case == "upload-refused":
        glance.answer("GET", "/v2/info/import", 404, "")
        glance.answer("POST", "/v2/images", 400, text)
        return run_cli("upload", SMALL_IMAGE, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                       "--cert-uuid", CERT_ID, env=env), errors.InputError.exit_code
    if case == "upload-import-failed":
        glance.answer("GET", "/v2/info/import", 200, {"import-methods": {"value": ["glance-direct"]}})
        glance.answer("POST", "/v2/images", 201, {"id": IMAGE_ID, "status": "queued"})
        glance.answer("PUT", f"/v2/images/{IMAGE_ID}/stage", 204, "")
        glance.answer("GET", f"/v2/images/{IMAGE_ID}", 200, {"id": IMAGE_ID, "status": "queued"})
        glance.answer("PATCH", f"/v2/images/{IMAGE_ID}", 200, {"id": IMAGE_ID, "status": "queued"})
        glance.answer("POST", f"/v2/images/{IMAGE_ID}/import", 409, text)
        glance.answer("DELETE", f"/v2/images/{IMAGE_ID}", 204, "")
        return run_cli("upload", SMALL_IMAGE, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"),
                       "--cert-uuid", CERT_ID, env=env), errors.ImportFailed.exit_code
    raise AssertionError(case)


CERT_ID = "0b6e3e1c-6a43-4bde-9a5e-3d1f6d1b8c2a"
SMALL_IMAGE = Path(__file__).resolve().parent.parent / "certs-test" / "manifest.json"  # any small file
GLANCE_CASES = ("verify-error-page", "verify-not-found", "verify-record", "audit-error-page", "audit-records",
                "audit-next-page", "upload-refused", "upload-import-failed")


@pytest.mark.parametrize("case", GLANCE_CASES)
def test_every_hostile_character_from_glance_is_shown_as_an_escape(glance, cloud_env, case):
    result, codes = run_glance_case(glance, cloud_env, HOSTILE, case)
    assert result.code in (codes if isinstance(codes, tuple) else (codes,)), result
    assert_clean(result.stderr)
    assert_clean(result.stdout, first=None)
    if case.startswith(("verify-error", "audit-error", "upload-refused")):
        assert "\\x1b]0;pwned" in result.stderr and "\\u202e" in result.stderr, result  # shown, not dropped


@pytest.mark.parametrize("case", GLANCE_CASES)
def test_hypothesis_text_from_glance_never_reaches_the_terminal_raw(glance, cloud_env, case):
    @given(hostile_text)
    @CLI_RUNS
    def check(text: str) -> None:
        result, codes = run_glance_case(glance, cloud_env, text, case)
        assert result.code in (codes if isinstance(codes, tuple) else (codes,)), result
        assert_clean(result.stderr)
        assert_clean(result.stdout, first=None)

    check()


# --- a properties document and a certificate ------------------------------------------------------


def test_a_local_properties_file_with_hostile_values(tmp_path):
    @given(hostile_text)
    @CLI_RUNS
    def check(text: str) -> None:
        props = tmp_path / "props.json"
        props.write_text(json.dumps({"img_signature": "AAAA", "img_signature_hash_method": text,
                                     "img_signature_key_type": text, "img_signature_certificate_uuid": text}))
        result = run_cli("verify", SMALL_IMAGE, "--properties", props, "--cert", cert_of("RSA-PSS"))
        assert result.code in (errors.PropertiesError.exit_code, errors.UnsupportedAlgorithm.exit_code), result
        assert_clean(result.stderr)

    check()
    props = tmp_path / "props.json"
    props.write_text(json.dumps({"img_signature": HOSTILE}))
    result = run_cli("verify", SMALL_IMAGE, "--properties", props, "--cert", cert_of("RSA-PSS"))
    assert result.code == errors.PropertiesError.exit_code, result
    assert_clean(result.stderr)


def _certificate_with_subject(text: str, out: Path) -> Path:
    """A certificate for the RSA-PSS test leaf's key, self-issued, whose subject's OUs spell ``text``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_of("RSA-PSS").read_bytes(), None)
    leaf = x509.load_pem_x509_certificate(cert_of("RSA-PSS").read_bytes())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer"), *(  # the name, in pieces of 60
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, text[i:i + 60])
        for i in range(0, len(text), 60))])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(leaf.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=30)))
    for extension in leaf.extensions:
        if extension.oid != x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER:
            builder = builder.add_extension(extension.value, extension.critical)
    out.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))  # type: ignore[arg-type]
    return out


def test_a_certificate_subject_with_escapes_is_printed_visibly(tmp_path, sample_image):
    """``verify`` prints the signer's subject on success (stdout) and on failure (stderr): a subject is the
    certificate holder's text, and may hold any control character."""
    subject = "".join(SEQUENCES) + "\u202e\u2028\x85x"
    cert = _certificate_with_subject(subject, tmp_path / "cert.pem")
    signed = run_cli("sign", sample_image, "--key", key_of("RSA-PSS"), "--cert", cert, "--cert-uuid", CERT_ID,
                     "--no-raw-digest", "-o", tmp_path / "props.json")
    assert signed.code == 0, signed
    assert_clean(signed.stderr, first=None)
    ok = run_cli("verify", sample_image, "--properties", tmp_path / "props.json", "--cert", cert)
    assert ok.code == 0, ok
    assert_clean(ok.stdout, first="OK:")
    assert "\\x1b]0\\;pwned" in ok.stdout and "\\u202e" in ok.stdout  # RFC 4514 escapes the ;
    untrusted = run_cli("verify", sample_image, "--properties", tmp_path / "props.json", "--cert", cert,
                        "--trusted-file", pki("root-ca.pem"))
    assert untrusted.code == errors.UntrustedCertificate.exit_code, untrusted
    assert_clean(untrusted.stderr)


# --- the hook: libvirt's start error and the log ----------------------------------------------------


def test_the_hook_never_writes_foreign_text_raw_to_stderr_or_its_log(tmp_path):
    """File names under Nova's directories are the nova user's text, image ids come from the domain XML:
    a refusal names them on stderr (libvirt's start error, Nova's instance fault) and in the log."""
    from tests.test_boot_hook import Host, domain_xml

    host = Host(tmp_path)
    (host.instances / "_base").mkdir(parents=True)
    weird = "x\nimgsign: OK allowed\r\x85\u202e\u2028\x1b"
    xml_text = "".join(c if c not in "\n\r\x1b" else f"&#{ord(c)};" for c in weird if c != "\x1b")

    @given(st.text(st.sampled_from([c for c in HOSTILE_CHARS if c in "\t\n\r" or ord(c) >= 0x7f]) | st.characters(
        whitelist_categories=("L", "N")), min_size=1, max_size=30))
    @CLI_RUNS
    def check(text: str) -> None:
        encoded = "".join(f"&#{ord(c)};" if not c.isalnum() else c for c in text)
        instance = str(uuid.uuid4())
        disk = f"{host.instances}/{instance}/disk{encoded}"
        xml = domain_xml(instance, f"img{encoded}", [(Path(disk), "qcow2")])
        result = host.hook(instance, xml)
        assert result.returncode != 0, result.stderr
        assert_clean(result.stderr)
        for line in host.log.read_text().splitlines():
            json.loads(line)
            assert_clean(line, first="{")

    check()
    instance = str(uuid.uuid4())
    result = host.hook(instance, domain_xml(instance, f"img{xml_text}",
                                            [(Path(f"{host.instances}/_base/{xml_text}"), "raw")]))
    assert result.returncode != 0, result.stderr
    assert_clean(result.stderr)
    assert "imgsign: OK allowed" not in result.stderr.replace("\\nimgsign: OK allowed", "")


def test_the_hook_script_cleans_even_an_internal_error(tmp_path):
    """hooks/libvirt-qemu's last resort prints the exception's text: cleaned too."""
    import subprocess

    hook = Path(__file__).resolve().parent.parent / "hooks" / "libvirt-qemu"
    script = tmp_path / "sitecustomize.py"  # makes main() raise with hostile text, as a bug could
    script.write_text("import imgsign.compute.libvirt_hook as h\n"
                      f"def boom(*a, **k):\n    raise RuntimeError({HOSTILE!r})\nh.main = boom\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(hook), "instance-1", "prepare", "begin", "-"], input=b"",
                          capture_output=True, timeout=60, env=env)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1 and "internal error RuntimeError" in stderr, stderr
    assert_clean(stderr)
