"""Configuration: the models (``models``), reading them from file, env and flags
(``load``) with where each value came from (``provenance``), printing them (``report``).
This module is the package's map."""

from .load import CONFIG_ENV, DEFAULT_CONFIG_PATHS, ENV_PREFIX, find_config_file, load_config
from .models import (
    AZURE_CONNECTION_STRING_ENV,
    DRIVERS,
    MIB,
    AzureStorage,
    Config,
    ConfigError,
    CorsConfig,
    ExpirationConfig,
    GCSStorage,
    HooksConfig,
    HttpHookConfig,
    LocalStorage,
    MemoryStorage,
    S3Storage,
    ServerConfig,
    StartupError,
    StorageConfig,
    TlsConfig,
    mask_url,
)
from .provenance import Provenance
from .report import dump_config

__all__ = [
    "AZURE_CONNECTION_STRING_ENV",
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATHS",
    "DRIVERS",
    "ENV_PREFIX",
    "MIB",
    "AzureStorage",
    "Config",
    "ConfigError",
    "CorsConfig",
    "ExpirationConfig",
    "GCSStorage",
    "HooksConfig",
    "HttpHookConfig",
    "LocalStorage",
    "MemoryStorage",
    "Provenance",
    "S3Storage",
    "ServerConfig",
    "StartupError",
    "StorageConfig",
    "TlsConfig",
    "dump_config",
    "find_config_file",
    "load_config",
    "mask_url",
]
