"""TEST-ONLY stand-in for keystonemiddleware's auth_token: map ``X-Auth-Token`` to identity headers.

A token ``imgsign-test:PROJECT:ROLE,ROLE`` makes the request one of a user of
PROJECT with those roles: the filter sets the X-Identity-Status / X-Project-Id /
X-User-Id / X-Roles headers that Glance's ``context`` middleware reads (and that
keystonemiddleware would set after validating a token with Keystone), dropping
any the client sent itself. Any other token is refused with 401, as an invalid
Keystone token would be. Requests without a token pass unchanged, so tests that
send the identity headers directly (GlanceServer.headers) keep working.

Loaded from glance_app/ (the server script's own directory, first on sys.path)
by ``[filter:token-identity]`` in glance-api-paste.ini. imgsign itself knows
nothing of it: it authenticates with keystoneauth's ``admin_token`` plugin
(token + endpoint) from a clouds.yaml, like against any token-accepting cloud.
"""

PREFIX = "imgsign-test:"
IDENTITY = ("HTTP_X_IDENTITY_STATUS", "HTTP_X_PROJECT_ID", "HTTP_X_TENANT_ID", "HTTP_X_USER_ID", "HTTP_X_ROLES",
            "HTTP_X_SERVICE_CATALOG", "HTTP_X_DOMAIN_ID", "HTTP_X_USER_DOMAIN_ID", "HTTP_X_PROJECT_DOMAIN_ID")


def token_identity(app):
    def middleware(environ, start_response):
        token = environ.get("HTTP_X_AUTH_TOKEN")
        if token is None:
            return app(environ, start_response)
        parts = token.split(":")
        if not token.startswith(PREFIX) or len(parts) != 3 or not parts[1] or not parts[2]:
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Keystone uri="none"')])
            return [b"The request you have made requires authentication."]
        for name in IDENTITY:
            environ.pop(name, None)
        _, project, roles = parts
        environ.update({"HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_PROJECT_ID": project,
                        "HTTP_X_USER_ID": f"user-of-{project}", "HTTP_X_ROLES": roles})
        return app(environ, start_response)

    return middleware


def filter_factory(global_conf, **local_conf):
    return token_identity
