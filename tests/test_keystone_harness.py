"""The test Keystone (tests/servers/keystone.py): the accounts the other server tests rely on."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.servers


def _token_info(keystone, token: str) -> dict:
    response = requests.get(f"{keystone.auth_url}/auth/tokens", timeout=30,
                            headers={"X-Auth-Token": keystone.token("admin"), "X-Subject-Token": token})
    assert response.status_code == 200, response.text
    return response.json()["token"]


def test_project_tokens_name_the_project_by_id_and_name(keystone):
    info = _token_info(keystone, keystone.token("alice"))
    assert info["project"]["name"] == "alpha"
    assert info["project"]["id"] == keystone.project_id("alpha") != "alpha"
    assert {role["name"] for role in info["roles"]} == {"member", "reader"}  # member implies reader
    assert info["methods"] == ["password"]


def test_projects_and_roles_are_distinct(keystone):
    assert keystone.project_id("alpha") != keystone.project_id("beta")
    assert {role["name"] for role in _token_info(keystone, keystone.token("carol"))["roles"]} == {"reader"}
    assert _token_info(keystone, keystone.token("bob"))["project"]["name"] == "beta"


def test_a_user_cannot_scope_to_a_foreign_project(keystone):
    bob = keystone.accounts["bob"]
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "id": bob.user_id, "password": bob.password}}}, "scope": {"project": {"id": keystone.project_id("alpha")}}}}
    assert requests.post(f"{keystone.auth_url}/auth/tokens", json=body, timeout=30).status_code == 401


def test_a_forged_token_is_refused(keystone):
    response = requests.get(f"{keystone.auth_url}/auth/tokens", timeout=30,
                            headers={"X-Auth-Token": keystone.token("admin"), "X-Subject-Token": "imgsign-test:alpha"})
    assert response.status_code == 404


def test_service_users_can_validate_user_tokens(keystone):
    """keystonemiddleware's auth_token validates with a service user: the ``service`` role must allow that."""
    for service in ("glance", "barbican", "imgsign-hook", "imgsign-gateway"):
        response = requests.get(f"{keystone.auth_url}/auth/tokens", timeout=30, headers={
            "X-Auth-Token": keystone.token(service), "X-Subject-Token": keystone.token("alice")})
        assert response.status_code == 200, (service, response.text)
