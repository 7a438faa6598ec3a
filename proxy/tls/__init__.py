"""TLS for interception: the local CA, leaf certificates, TLS contexts, and a TLS stream.

This wing knows certificates and the TLS record layer, never the proxy: it
imports nothing from the server, the client or the test plugin. The server
asks it for a context to present to a client (a leaf for the name asked
for), a context to verify origins with, and a stream that decrypts a
client's bytes; the CLI asks it to create, load and describe the CA.
"""
