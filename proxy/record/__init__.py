"""Flow records and their sinks: the SQLite flow store and its queries, HAR and JSON lines.

Nothing here touches a socket or imports the server, the client or the
pytest plugin: flows come in as plain ``Flow`` values and leave as rows,
files and text.
"""
