"""The testing kit: the pytest plugin (``fwdproxy``, ``origin_http`` ...), loopback origins, flow queries.

``pytest_plugin`` is registered as the ``pytest11`` entry point ``fwdproxy``;
``origins`` serves scripted HTTP and HTTPS origins on loopback; ``flowstore``
collects a test's flows and answers queries with failures that list what was
seen.

May import every other wing except ``proxy.cli``; nothing of ``proxy`` imports it.
This file imports nothing, so loading the plugin loads only what it uses.
"""
