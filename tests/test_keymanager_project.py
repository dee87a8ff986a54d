"""Which key-manager project a command works in (imgsign.keymanager.config), without servers.

The Keystone scope here is a stand-in (no session): resolve_project and check_project_for_glance only
read its project. The real thing is tests/test_keystone_projects_e2e.py (real Keystone, Barbican, Glance).
On main (08393ff) none of these names existed: the project was ``[imgsign] project_id`` or ``default``.
"""

from __future__ import annotations

import pytest

from imgsign import errors
from imgsign.keymanager import config

ALPHA = "c7f5e88ce9ec472394ed70974397d6e3"


def _conf(tmp_path, text: str = ""):
    path = tmp_path / "imgsign.conf"
    path.write_text(text)
    return config.load(str(path))


def _scope(project_id: str = ALPHA, name: str | None = "alpha") -> config.KeystoneScope:
    return config.KeystoneScope(session=None, cloud="mycloud", project_id=project_id, project_name=name)  # type: ignore[arg-type]


def test_the_tokens_project_unless_configured(tmp_path):
    project = config.resolve_project(_conf(tmp_path), _scope())
    assert (project.id, project.name, str(project)) == (ALPHA, "alpha", f"project alpha ({ALPHA})")
    assert "cloud 'mycloud'" in project.source
    configured = config.resolve_project(_conf(tmp_path, "[imgsign]\nproject_id = other\n"), _scope())
    assert (configured.id, configured.name, str(configured)) == ("other", None, "project other")
    assert configured.source.startswith("[imgsign] project_id in ")


def test_default_without_a_session_or_configuration(tmp_path):
    project = config.resolve_project(_conf(tmp_path), None)
    assert project.id == config.DEFAULT_PROJECT and "no Keystone session" in project.source


@pytest.mark.parametrize("configured, hint", [("alpha", "is that project's name"),
                                              ("0123", "stored where Glance does not look")])
def test_a_project_glance_will_not_read_from_is_refused_naming_both(tmp_path, configured, hint):
    conf = _conf(tmp_path, f"[imgsign]\nproject_id = {configured}\n")
    with pytest.raises(errors.InputError) as refused:
        config.check_project_for_glance(config.resolve_project(conf, _scope()), _scope())
    message = refused.value.message
    assert f"project {configured} ([imgsign] project_id in " in message and f"project alpha ({ALPHA})" in message
    assert hint in message and f"project_id = {ALPHA}" in message


def test_the_tokens_own_project_passes(tmp_path):
    conf = _conf(tmp_path, f"[imgsign]\nproject_id = {ALPHA}\n")
    config.check_project_for_glance(config.resolve_project(conf, _scope()), _scope())
    config.check_project_for_glance(config.resolve_project(_conf(tmp_path), _scope()), _scope())


def test_castellan_credentials_take_precedence_over_a_session(tmp_path):
    conf = _conf(tmp_path, "[key_manager]\nbackend = barbican\nauth_type = keystone_password\n"
                           "project_name = alpha\n")
    assert config.has_credentials(conf) and not config.needs_keystone(conf)
    embedded = _conf(tmp_path, "[key_manager]\nauth_type = keystone_password\n")
    assert not config.has_credentials(embedded)  # the embedded store needs no credentials
    assert config.needs_keystone(_conf(tmp_path, "[key_manager]\nbackend = barbican\n[imgsign]\nproject_id = x\n"))
