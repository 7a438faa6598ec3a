"""The proxy: listener, handler, forwarding, tunnels, upstream pool, dialling, deadlines, policy, faults.

``listener.ProxyServer`` accepts connections and hands each to a
``handler.ProxyHandler`` thread, which validates the request with
``proxy.http1``, applies ``policy``, and routes it to ``forward`` (plain HTTP,
pooled upstream connections from ``pool``) or ``tunnel`` (CONNECT), dialling
origins through ``connect`` (``intercept`` when a tunnel is decrypted);
``failures`` says what a failure at the next hop means to the client.
``watchdog`` enforces every deadline; ``faults`` plans the rules a test
installs (``rules``, ``chaos``, ``replay``), and ``shaping`` makes the client
side misbehave as they say; ``health`` is ``fwdproxy health``.

May import ``proxy.http1``, ``proxy.record``, ``proxy.config`` and
``proxy.tls``; never ``proxy.client``, ``proxy.ui``, ``proxy.testing`` or
``proxy.cli``. This file imports nothing, so loading one module of the server
loads only what that module needs.
"""
