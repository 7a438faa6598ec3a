"""The traffic page: a small HTTP app over the flow store, with its static files in the package.

``app.UiServer`` serves one store file (``fwdproxy --ui`` while recording,
``fwdproxy ui FILE.sqlite`` for a saved capture); ``guard`` decides who may
use it; ``views`` shapes what its JSON says; ``streams`` writes the live
events and HAR downloads. It may import ``proxy.record``
and below, never the server, the client, the testing kit or the CLI.
"""
