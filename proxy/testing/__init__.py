"""The testing kit: the pytest plugin (``fwdproxy``, ``origin_http`` ...), loopback origins, flow queries.

``pytest_plugin`` is registered as the ``pytest11`` entry point ``fwdproxy``;
``facade`` is the proxy a test sees (``FwdProxy``) and the host map it dials
through; ``rulebook`` holds the fault verbs a test calls (``fwdproxy.fail(503, times=2)``);
``cassette`` reads and writes HAR cassettes for record and replay; ``origins``
serves scripted HTTP and HTTPS origins on loopback; ``flowstore`` collects a
test's flows and answers queries with failures that list what was seen, and
``flowassert`` says how a near miss differs.

May import every other wing except ``proxy.cli``; nothing of ``proxy`` imports it.
This file imports nothing, so loading the plugin loads only what it uses.
"""
