"""HTTP/1.1 wire rules, with no sockets: request targets, header fields, chunked framing, errors.

Owns what RFC 9110 and RFC 9112 say about bytes on the wire, as pure functions
over plain values and file-like readers, and the errors that carry the status a
proxy answers with. Imports nothing else of ``proxy``: every other wing may
import it.
"""
