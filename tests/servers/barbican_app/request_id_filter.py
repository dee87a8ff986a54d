"""Paste filter: give the WSGI request a ``request_id`` attribute for Barbican 22/23.

Bug worked around: Barbican's ``UnauthenticatedContextMiddleware.process_request``
builds its context with ``'request_id': req.request_id``, but since Barbican 22 no
middleware sets that attribute any more (request ids moved to oslo.middleware's
``RequestId``, which only sets ``environ['openstack.request_id']``). Every /v1 call
of the keystone-less pipeline then fails with ``AttributeError: request_id`` (HTTP
500). Barbican 21 does not have the bug; the keystone pipeline is not affected.

Workaround: webob keeps ad-hoc request attributes in ``environ['webob.adhoc_attrs']``,
so copying ``environ['openstack.request_id']`` there makes ``req.request_id`` work.
This filter runs inside the Barbican server process (its own venv), placed after
``request_id`` and before ``unauthenticated-context`` in api-paste.ini.
"""


def filter_factory(global_conf, **local_conf):
    def make_filter(app):
        def request_id_app(environ, start_response):
            attrs = environ.setdefault("webob.adhoc_attrs", {})
            attrs.setdefault("request_id", environ.get("openstack.request_id"))
            return app(environ, start_response)
        return request_id_app
    return make_filter
