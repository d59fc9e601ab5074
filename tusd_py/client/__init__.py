"""An async tus 1.0.0 client on aiohttp: resumable uploads across processes (URL
storages + fingerprints), per-chunk checksums, deferred length for streams, parallel
uploads through concatenation, retries with backoff. See ``TusClient``."""

from .client import ServerInfo, TusClient, UploadInfo
from .errors import TusClientError, TusResponseError, UploadNotFound
from .fingerprint import Fingerprinter, FullSHA256Fingerprint, MD5Fingerprint, SHA256Fingerprint
from .storage import (
    FileURLStorage,
    InMemoryURLStorage,
    SQLiteURLStorage,
    URLStorage,
    default_storage_path,
)
from .sync import SyncTusClient
from .uploader import Source, Uploader

#: tuspy's name for the default fingerprint.
Fingerprint = MD5Fingerprint

__all__ = [
    "FileURLStorage",
    "Fingerprint",
    "Fingerprinter",
    "FullSHA256Fingerprint",
    "InMemoryURLStorage",
    "MD5Fingerprint",
    "SHA256Fingerprint",
    "SQLiteURLStorage",
    "ServerInfo",
    "Source",
    "SyncTusClient",
    "TusClient",
    "TusClientError",
    "TusResponseError",
    "URLStorage",
    "UploadInfo",
    "UploadNotFound",
    "Uploader",
    "default_storage_path",
]
