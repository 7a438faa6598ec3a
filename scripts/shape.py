#!/usr/bin/env python3
"""The shape of the code, as figures: what a plain GET touches, import levels, cycles, sizes.

    .venv/bin/python scripts/shape.py            # from a checkout with the test extra installed

* modules per GET: the distinct files under ``proxy/`` whose code runs while one
  plain ``GET http://127.0.0.1:PORT/`` goes through an in-process ProxyServer
  to a stdlib origin (a new client connection; one warm-up GET first, so lazy
  imports are not counted). Every thread is profiled.
* import levels: the longest chain of ``proxy`` modules importing one another
  (the package root, which only re-exports, is left out); cycles: groups of
  modules that import one another, TYPE_CHECKING imports included.
* the largest module and function, in lines.

It reads the package it imports, so the same script measures any checkout.
"""

from __future__ import annotations

import ast
import http.client
import http.server
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import grimp  # comes with import-linter, in the test extra

from proxy import Config, ProxyServer

PACKAGE = Path(sys.modules["proxy"].__file__ or "").parent


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def get(proxy: ProxyServer, origin_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", f"http://127.0.0.1:{origin_port}/")
    assert conn.getresponse().read() == b"ok"
    conn.close()


def modules_per_get() -> list[str]:
    seen: set[str] = set()
    recording = threading.Event()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and recording.is_set():
            seen.add(frame.f_code.co_filename)

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    # Set before the proxy starts: its threads (reused across connections) inherit it.
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        with ProxyServer(Config(port=0), sinks=[]) as proxy:
            get(proxy, origin.server_address[1])
            recording.set()
            get(proxy, origin.server_address[1])
            recording.clear()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    origin.shutdown()
    return sorted(str(Path(f).relative_to(PACKAGE)) for f in seen if Path(f).is_relative_to(PACKAGE))


def import_shape() -> tuple[int, list[str], list[list[str]]]:
    graph = grimp.build_graph("proxy", cache_dir=None)
    modules = sorted(m for m in graph.modules if m != "proxy")
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules} for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def strongly_connected(m: str) -> None:  # Tarjan
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in edges[m]:
            if n not in index:
                strongly_connected(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                group.append(n)
                if n == m:
                    break
            groups.append(sorted(group))

    for m in modules:
        if m not in index:
            strongly_connected(m)
    group_of = {m: i for i, g in enumerate(groups) for m in g}
    level: dict[int, int] = {}
    chain: dict[int, list[str]] = {}
    for i, group in enumerate(groups):  # Tarjan emits a group after every group it imports
        below = {group_of[n] for m in group for n in edges[m]} - {i}
        deepest = max(below, key=lambda j: level[j], default=None)
        level[i] = 1 + (level[deepest] if deepest is not None else 0)
        chain[i] = ["+".join(group), *(chain[deepest] if deepest is not None else [])]
    top = max(level, key=lambda i: level[i])
    return level[top], chain[top], [g for g in groups if len(g) > 1]


def sizes() -> tuple[tuple[int, str], tuple[int, str]]:
    largest_module, largest_function = (0, ""), (0, "")
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(PACKAGE))
        largest_module = max(largest_module, (len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                span = (node.end_lineno or node.lineno) - node.lineno + 1
                largest_function = max(largest_function, (span, f"{name}:{node.name}"))
    return largest_module, largest_function


def main() -> None:
    touched = modules_per_get()
    levels, chain, cycles = import_shape()
    (module_lines, module), (function_lines, function) = sizes()
    print(f"modules with code run by one plain GET: {len(touched)} ({', '.join(touched)})")
    print(f"import levels: {levels} ({' -> '.join(m.removeprefix('proxy.') for m in chain)})")
    print(f"import cycles: {len(cycles)} {cycles if cycles else ''}".rstrip())
    print(f"largest module: {module} ({module_lines} lines)")
    print(f"largest function: {function} ({function_lines} lines)")


if __name__ == "__main__":
    main()
