"""Storage drivers: the contract (``base``), one package per driver, and the registry
that builds the one ``storage.driver`` names (``registry.build_store``)."""

from __future__ import annotations

from .base import Capability, Download, Store, Upload, UploadLock

__all__ = ["Capability", "Download", "Store", "Upload", "UploadLock"]
