"""Where an effective configuration came from: the file, each key's source."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Provenance:
    """Where an effective configuration came from (``load_config`` fills it in)."""

    #: The config file read (absolute path); None: there was none (built-in defaults).
    file: str | None = None
    #: Dotted key -> where its value came from: ``file <path>``, ``env <NAME>``,
    #: ``command line``.
    sources: Mapping[str, str] = field(default_factory=dict)
    #: ``TUSD_*`` variables that are not settings (no ``__``: Kubernetes service links
    #: such as ``TUSD_PORT``, ...): ignored.
    ignored_env: tuple[str, ...] = ()
    #: Ignored variables spelt like a setting with ``_`` for ``__`` -> the name meant.
    misspelt_env: Mapping[str, str] = field(default_factory=dict)
    #: The directory relative paths in the file are meant from: the file's directory,
    #: else the working directory the config was read in.
    base_dir: str = field(default_factory=os.getcwd)

    def source_of(self, key: str) -> str | None:
        """Where ``key`` (or, for a section or a mapping, a key under it) was set."""
        if key in self.sources:
            return self.sources[key]
        return next((src for dotted, src in self.sources.items()
                     if dotted.startswith(key + ".")), None)
