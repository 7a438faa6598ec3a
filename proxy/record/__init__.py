"""Records of traffic: the Flow of one exchange or tunnel, its sinks, and what turns flows into files.

Owns plain records and their formats (HAR, JSON lines), the SQLite flow store
and its queries, and ``fwdproxy flows``; knows nothing of sockets or pytest.
May import ``proxy.http1`` only; the server, the client and the testing kit
import it.
"""
