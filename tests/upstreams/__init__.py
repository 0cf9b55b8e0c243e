"""Mock upstream servers that speak real provider wire formats.

Each ``build_*_mock(state) -> Router`` serves a provider's real paths on our
own HTTP server, checks auth the way the provider does, records what it
received in ``state.requests`` and can be told to fail, stall or die
mid-stream (``state.py``: ``UpstreamState``, ``RecordedRequest``, ``record``).
``server.py`` starts one on 127.0.0.1 (on the running loop, or on a thread for
synchronous tests such as the SDK ones).
"""
