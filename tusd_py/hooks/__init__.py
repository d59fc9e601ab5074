"""Hooks: tusd v2-compatible HTTP hooks and in-process Python hooks, fed by upload events.

``setup.py`` wires the ``HookListener`` (``listener.py``) into the app; ``payload.py`` is
tusd's wire format; ``http.py`` and ``python.py`` are the two kinds of backend.
"""
