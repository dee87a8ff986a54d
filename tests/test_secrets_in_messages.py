"""Issue 18, class 6: no error or log line carries any piece of a secret option's value, whatever makes the
configuration invalid.

Every secret option (passwords, tokens, PINs, passphrases, application credential secrets) gets
hypothesis-generated values, placed in configurations made invalid in many ways: a "$" oslo.config takes for
a reference, a broken line after the secret, the secret before any section, duplicate sections and options,
an unterminated quote, an unknown option, a neighbour of the wrong type. The CLI (imgsign.conf, clouds.yaml,
PKCS#11 URIs) and the hook (hooks/libvirt-qemu as a subprocess with IMGSIGN_BOOT_CONFIG) run as real
processes; no piece of the secret of 4 characters or more may appear on stdout, stderr or in the hook's log.

On main (1f59a47) these fail: configparser quoted the line it could not parse (the secret's broken tail, a
secret line before any section), oslo.config named the "option" after a "$" in a password, keystoneauth's
error for it reached the hook's stderr, and the PKCS#11 usage error quoted the URI with its pin-value.
"""

from __future__ import annotations

import json
import string
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import key_of, run_cli
from tests.test_boot_hook import Host, domain_xml

MIN = 4
MARK = "[redacted]"
PROCESS_RUNS = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
#: A secret: any letters, digits, punctuation and symbols ("$", quotes, "%", "#" included), no whitespace.
secrets = st.text(st.sampled_from(string.ascii_letters + string.digits + string.punctuation)
                  | st.characters(whitelist_categories=("L", "N", "P", "S"), max_codepoint=0x2FFF),
                  min_size=8, max_size=40)


def grams(text: str, size: int = MIN) -> set[str]:
    return {text[i:i + size] for i in range(len(text) - size + 1)}


def neutral(secret: str) -> str:
    """The secret's shape without its content: punctuation kept (it is what makes a configuration invalid),
    everything else one letter no message holds."""
    return "".join(c if c in string.punctuation else "\u00c6" for c in secret)


#: Cases that also put the secret's value into an option that is no secret (``backend = <value>``), whose
#: error names it: there only the scrubber stands between the value and the message, and it takes out
#: whole secrets and pieces of at least PIECE_LENGTH characters (shorter would make it an oracle, see
#: imgsign._internal.redact).  Everywhere else no piece of even MIN characters may show.
NEIGHBOUR_CASES = {"bad-neighbour", "bad-conversion-size", "bad-mode", "unknown-backend", "wrong-type-neighbour"}


def leaked(secret: str, output: str, baseline: Callable[[], str], case: str = "") -> set[str]:
    """Pieces of ``secret`` in ``output`` that the same run with a neutral secret does not print too (message
    text such as "configuration" is no leak when a secret happens to contain it); a redaction mark is
    imgsign's text, not the secret's."""
    from imgsign._internal.redact import PIECE_LENGTH

    size = min(PIECE_LENGTH, len(secret)) if case in NEIGHBOUR_CASES else MIN
    output = output.replace(MARK, "\x00")
    found = {g for g in grams(secret, size) if g in output}
    return found - grams(baseline(), size) if found else set()


# --- the scrubber and the finder, in-process ----------------------------------------------------------------


@given(secrets, st.text(max_size=60), st.text(max_size=60), st.integers(0, 40), st.integers(0, 40))
@settings(max_examples=400)
def test_scrub_leaves_no_long_piece_of_a_secret(secret, before, after, start, stop):
    from imgsign._internal.redact import PIECE_LENGTH, scrub

    piece = secret[start:start + PIECE_LENGTH + stop]
    for message in (before + secret + after, before + piece + after + secret[::-1], piece * 3):
        cleaned = scrub(message, [secret]).replace(MARK, "\x00")  # the mark is imgsign's text
        assert not grams(secret, min(PIECE_LENGTH, len(secret))) & grams(cleaned, PIECE_LENGTH), (message, cleaned)


@given(secrets, st.integers(0, 40), st.integers(1, 7))
@settings(max_examples=300)
def test_scrub_is_no_oracle_for_short_pieces(secret, start, size):
    """Text a reader chose (an image name, a hostile Glance's page) is never redacted for holding a short
    piece of a secret: the redaction would tell that reader which pieces the secret holds."""
    from imgsign._internal.redact import scrub

    from imgsign._internal.redact import PIECE_LENGTH

    piece = secret[start:start + size]
    assume(len(piece) == size < len(secret))
    probe = f"image name <{piece}> refused"
    # The probe's own text next to the piece may make a long piece (secret "0000000<0000000", probe "<0000000"):
    # that one is a long piece, and scrubbed as it should be.
    assume(not grams(secret, PIECE_LENGTH) & grams(probe, PIECE_LENGTH))
    assert scrub(probe, [secret]) == probe


SECRET_OPTIONS = ("password", "token", "application_credential_secret", "root_token_id", "approle_secret_id",
                  "passcode", "client_secret", "pin-value", "service_key")


@given(st.sampled_from(SECRET_OPTIONS), secrets, st.sampled_from(["=", " = ", ": ", ":"]),
       st.sampled_from(["", " # note", "\n  continued-part-XYZW", "\nbroken tail line"]))
@settings(max_examples=300)
def test_the_finder_sees_every_secret_option_value(option, secret, equals, tail):
    from imgsign._internal.redact import is_secret_option, secrets_in_text

    assert is_secret_option(option)
    text = f"[glance]\nauth_type = password\n{option}{equals}{secret}{tail}\nusername = demo\n"
    found = secrets_in_text(text)
    assert any(secret in value for value in found), found
    if tail.startswith("\n"):
        assert any(tail.strip() in value for value in found), found


def test_every_oslo_secret_option_is_in_the_one_list(tmp_path):
    """oslo.config marks its secret options (secret=True): each of them, in every group imgsign and the
    hook read (keystoneauth's [glance], castellan's [vault] and [barbican], imgsign's), is in imgsign's list."""
    from keystoneauth1 import loading as ks_loading

    from imgsign._internal.redact import is_secret_option
    from imgsign.keymanager import config as km_config

    conf_file = tmp_path / "imgsign.conf"
    conf_file.write_text("[key_manager]\nbackend = imgsign\n")
    conf = km_config.load(str(conf_file))
    ks_loading.register_auth_conf_options(conf, "glance")
    for plugin in ("password", "v3password", "token", "v3token", "v3applicationcredential", "admin_token",
                   "v3oidcclientcredentials", "v3totp"):
        ks_loading.register_auth_conf_options(conf, "glance")
        for option in ks_loading.get_auth_plugin_conf_options(plugin):
            if option.secret:
                assert is_secret_option(option.dest), option.dest
    from castellan.key_manager import barbican_key_manager, vault_key_manager  # noqa: F401 - registers options
    from castellan import options as castellan_options

    for group, options in castellan_options.list_opts():
        for option in options:
            if getattr(option, "secret", False):
                assert is_secret_option(option.dest), (group, option.dest)


# --- the hook ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adopting_host(tmp_path_factory) -> tuple[Host, str]:
    """A host with one unrecorded base (Nova converted it itself): booting it makes the hook adopt, so it
    reads [glance] with oslo.config and keystoneauth. Returns the host and the domain XML."""
    host = Host(tmp_path_factory.mktemp("secret-host"))
    image_id, _ = host.image(signed=False)
    instance, disk = host.instance(image_id)
    return host, domain_xml(instance, image_id, [(disk, "qcow2")])


def _closed_url() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


#: The hook's boot.conf broken in many ways around the secret (``{boot}`` is the valid [boot] section,
#: ``{glance}`` the rest of a valid [glance] section, ``{option}`` the secret option's name).
HOOK_CASES = {
    "dollar": "{boot}adopt = true\n\n[glance]\n{glance}{option} = {secret}$x{secret}\n",
    "dollar-brace": "{boot}adopt = true\n\n[glance]\n{glance}{option} = ${{{secret}}}\n",
    "broken-tail": "{boot}adopt = true\n\n[glance]\n{glance}{option} = {secret}\n{secret}\n",
    "before-any-section": "{option} = {secret}\n{boot}adopt = true\n",
    "duplicate-option": "{boot}adopt = true\n\n[glance]\n{glance}{option} = {secret}\n{option} = {secret}x\n",
    "duplicate-section": "{boot}adopt = true\n\n[glance]\n{glance}{option} = {secret}\n[glance]\nx = 1\n",
    "unterminated-quote": "{boot}adopt = true\n\n[glance]\n{glance}{option} = \"{secret}\n",
    "unknown-option": "{boot}adopt = true\n\n[glance]\n{glance}{option} = {secret}\nno_such_option = {secret}\n",
    "bad-neighbour": "{boot}adopt = true\nmax_fast_path_age = {secret}\n\n[glance]\n{glance}{option} = {secret}\n",
    "bad-conversion-size": "{boot}adopt = true\nadopt_by_conversion = true\nadopt_conversion_max_size = {secret}\n"
                           "\n[glance]\n{glance}{option} = {secret}\n",
    "wrong-type-neighbour": "{boot}adopt = true\n\n[glance]\n{glance}timeout = soon\n{option} = {secret}\n",
    "bad-mode": "{boot}mode = {secret}\nadopt = true\n\n[glance]\n{glance}{option} = {secret}\n",
    "broken-section-header": "{boot}adopt = true\n\n[glance\n{option} = {secret}\n",
}
#: [glance] credentials per secret option (keystoneauth's plugins); each one's auth_url or endpoint is closed.
HOOK_OPTIONS = {
    "password": "auth_type = password\nauth_url = {url}\nusername = demo\nuser_domain_id = default\n",
    "token": "auth_type = admin_token\nendpoint = {url}\n",
    "application_credential_secret": "auth_type = v3applicationcredential\nauth_url = {url}\n"
                                     "application_credential_id = abc\n",
}


def _hook_config(host: Host, case: str, option: str, secret: str) -> str:
    boot = (f"[boot]\ninstances_path = {host.instances}\nstate_dir = {host.state}\n"
            f"log_file = {host.log}\nadopt_timeout = 3\n")
    glance = HOOK_OPTIONS[option].format(url=_closed_url())
    return HOOK_CASES[case].format(boot=boot, glance=glance, option=option, secret=secret)


INSTANCE = str(uuid.uuid4())


def _run_hook(host: Host, xml: str, text: str) -> str:
    host.config.write_text(text)
    if host.log.exists():
        host.log.unlink()
    result = host.hook(INSTANCE, xml)  # one instance id for a run and its baseline: ids are no leak
    assert result.returncode != 0, (text, result.stderr)
    return result.stdout + result.stderr + (host.log.read_text() if host.log.exists() else "")


@pytest.mark.parametrize("case", sorted(HOOK_CASES))
def test_no_piece_of_a_glance_secret_reaches_the_hooks_stderr_or_log(adopting_host, case):
    host, xml = adopting_host

    @given(st.sampled_from(sorted(HOOK_OPTIONS)), secrets)
    @PROCESS_RUNS
    def check(option: str, secret: str) -> None:
        output = _run_hook(host, xml, _hook_config(host, case, option, secret))
        found = leaked(secret, output, lambda: _run_hook(host, xml, _hook_config(host, case, option,
                                                                                 neutral(secret))), case)
        assert not found, (case, option, secret, found, output)

    check()


# --- the command line ----------------------------------------------------------------------------------------


#: imgsign.conf broken around a key manager secret (castellan's [vault] settings; the backend reads them).
CLI_CASES = {
    "dollar": "[key_manager]\nbackend = vault\n\n[vault]\nvault_url = {url}\n{option} = {secret}$x{secret}\n",
    "broken-tail": "[key_manager]\nbackend = vault\n\n[vault]\nvault_url = {url}\n{option} = {secret}\n{secret}\n",
    "before-any-section": "{option} = {secret}\n[key_manager]\nbackend = vault\n",
    "duplicate-section": "[vault]\n{option} = {secret}\n[vault]\nvault_url = {url}\n[key_manager]\nbackend = vault\n",
    "unterminated-quote": "[key_manager]\nbackend = vault\n\n[vault]\nvault_url = {url}\n{option} = '{secret}\n",
    "wrong-type-neighbour": "[key_manager]\nbackend = vault\n\n[vault]\nvault_url = {url}\ntimeout = soon\n"
                            "{option} = {secret}\n[imgsign]\nmax_chain_depth = {secret}\n",
    "unknown-backend": "[key_manager]\nbackend = {secret}\n\n[vault]\n{option} = {secret}\n",
    "broken-section-header": "[key_manager]\nbackend = vault\n[vault\n{option} = {secret}\n",
}
CLI_OPTIONS = ("root_token_id", "approle_secret_id")


def _run_cli_conf(tmp: Path, case: str, option: str, secret: str, debug: bool = False) -> str:
    conf = tmp / "imgsign.conf"
    conf.write_text(CLI_CASES[case].format(url=_closed_url(), option=option, secret=secret))
    result = run_cli("-c", conf, "cert", "list", env={"HOME": str(tmp)}, debug=debug)
    assert result.code != 0, result
    return result.stdout + result.stderr


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_no_piece_of_a_key_manager_secret_reaches_the_cli_output(tmp_path, case, debug):
    """Also under ``--debug`` (tracebacks and every library's debug log on stderr)."""
    @given(st.sampled_from(CLI_OPTIONS), secrets)
    @PROCESS_RUNS
    def check(option: str, secret: str) -> None:
        output = _run_cli_conf(tmp_path, case, option, secret, debug)
        found = leaked(secret, output, lambda: _run_cli_conf(tmp_path, case, option, neutral(secret), debug),
                       case)
        assert not found, (case, option, secret, found, output)

    check()


#: clouds.yaml broken around a secret (openstacksdk reads it for the Glance commands).
CLOUDS_CASES = {
    "unterminated-quote": "clouds:\n  c:\n    auth_type: {auth_type}\n    auth:\n      auth_url: {url}\n"
                          "      {option}: \"{secret}\n",
    "bad-indent": "clouds:\n  c:\n    auth:\n      {option}: {secret}\n     auth_url: {url}\n",
    "tab": "clouds:\n  c:\n    auth:\n\t{option}: {secret}\n",
    "valid-but-refused": "clouds:\n  c:\n    auth_type: {auth_type}\n    auth:\n      auth_url: {url}\n"
                         "      username: demo\n      {option}: {secret}\n",
}
CLOUDS_OPTIONS = {"password": "password", "application_credential_secret": "v3applicationcredential",
                  "token": "token"}


def _run_clouds(tmp: Path, case: str, option: str, secret: str, debug: bool = False) -> str:
    clouds = tmp / "clouds.yaml"
    clouds.write_text(CLOUDS_CASES[case].format(url=_closed_url(), option=option, secret=json.dumps(secret)[1:-1],
                                                auth_type=CLOUDS_OPTIONS[option]))
    result = run_cli("audit", "--os-cloud", "c", env={"HOME": str(tmp), "OS_CLIENT_CONFIG_FILE": str(clouds)},
                     debug=debug)
    assert result.code != 0, result
    return result.stdout + result.stderr


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("case", sorted(CLOUDS_CASES))
def test_no_piece_of_a_clouds_yaml_secret_reaches_the_cli_output(tmp_path, case, debug):
    """Also under ``--debug``: keystoneauth's and openstacksdk's debug logs included."""
    @given(st.sampled_from(sorted(CLOUDS_OPTIONS)), secrets)
    @PROCESS_RUNS
    def check(option: str, secret: str) -> None:
        output = _run_clouds(tmp_path, case, option, secret, debug)
        found = leaked(secret, output, lambda: _run_clouds(tmp_path, case, option, neutral(secret), debug))
        assert not found, (case, option, secret, found, output)

    check()


def test_no_piece_of_a_pkcs11_pin_value_reaches_the_cli_output(tmp_path, sample_image):
    """A PIN in a PKCS#11 URI (pin-value) is never quoted back, whatever is wrong with the command."""
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("irrelevant\n")

    def run(pin: str, case: str) -> str:
        uri = {"usage": f"pkcs11:token=t;object=o?pin-value={pin}",
               "unknown-attribute": f"pkcs11:token=t;object=o?pin-value={pin}&colour=blue",
               "no-module": f"pkcs11:token=t;object=o?module-path=/nonexistent/{uuid.uuid4()}.so&pin-value={pin}",
               "bad-percent": f"pkcs11:token=t;object=o%zz?pin-value={pin}"}[case]
        extra = ["--passphrase-file", passphrase] if case == "usage" else []
        result = run_cli("sign", sample_image, "--key", uri, "--cert-uuid", "x" * 8, *extra,
                         env={"HOME": str(tmp_path)})
        assert result.code != 0, result
        return result.stdout + result.stderr

    @given(st.text(st.sampled_from(string.ascii_letters + string.digits + "-._~"), min_size=8, max_size=30),
           st.sampled_from(["usage", "unknown-attribute", "no-module", "bad-percent"]))
    @PROCESS_RUNS
    def check(pin: str, case: str) -> None:
        assume(len(set(pin)) > 3)
        found = leaked(pin, run(pin, case), lambda: run("Q" * len(pin), case))
        assert not found, (case, pin, found)

    check()


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_no_piece_of_a_passphrase_or_token_reaches_the_cli_output(tmp_path, sample_image, debug):
    """A passphrase file's content (a wrong one, for an encrypted key) and a transit token (one with a space)
    are secrets: never in a message."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_of("RSA-PSS").read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"the right passphrase")))

    def run(secret: str) -> tuple[str, str]:
        passphrase = tmp_path / "passphrase"
        passphrase.write_text(secret + "\n")
        wrong = run_cli("sign", sample_image, "--key", encrypted, "--passphrase-file", passphrase,
                        "--cert-uuid", "x" * 8, env={"HOME": str(tmp_path)}, debug=debug)
        assert wrong.code != 0, wrong
        transit = run_cli("sign", sample_image, "--key", "hashivault://k", "--cert-uuid", "x" * 8,
                          env={"HOME": str(tmp_path), "VAULT_ADDR": _closed_url(), "VAULT_TOKEN": f"{secret} x",
                               "BAO_ADDR": "", "BAO_TOKEN": ""}, debug=debug)
        assert transit.code != 0, transit
        return wrong.stderr, transit.stderr

    @given(secrets)
    @PROCESS_RUNS
    def check(secret: str) -> None:
        outputs = run(secret)
        for index, output in enumerate(outputs):
            found = leaked(secret, output, lambda index=index: run(neutral(secret))[index])
            assert not found, (secret, found, output)

    check()
