"""In-process hooks: Python callables named ``package.module:function`` in the config.

A hook callable takes the hook request (the same dict an HTTP hook receives as JSON) and
returns a hook response dict in the same format, or None to carry on unchanged. It may be
a plain function (run in a worker thread, so it cannot stall the event loop) or a
coroutine function (awaited on the loop: it must not block). In a blocking hook
(pre-create, pre-finish, pre-access) it may also raise ``TusError`` to refuse the request
with that status and message.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ConfigError
from .http import HookError


class HookLoadError(ConfigError):
    """A configured ``module:function`` cannot be imported or is not callable."""


def load_callable(spec: str) -> Callable[[dict[str, Any]], Any]:
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise HookLoadError(f"hooks.python: {spec!r} is not of the form package.module:function")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while importing
        raise HookLoadError(f"hooks.python: cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HookLoadError(f"hooks.python: {module_name!r} has no {attr_path!r}") from None
    if not callable(target):
        raise HookLoadError(f"hooks.python: {spec!r} is not callable")
    return target


class PythonHook:
    name = "python"

    def __init__(self, spec: str, timeout: float) -> None:
        self.spec = spec
        self.fn = load_callable(spec)
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self.timeout = timeout or None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"Python hook {self.spec}"

    async def invoke(self, payload: Mapping[str, Any], *, forward: Mapping[str, str],
                     key: str) -> Any:
        arg = copy.deepcopy(dict(payload))  # a hook must not change what others see
        try:
            if self.is_async:
                return await asyncio.wait_for(self.fn(arg), self.timeout)
            result = await asyncio.wait_for(asyncio.to_thread(self.fn, arg), self.timeout)
            if inspect.isawaitable(result):  # a sync wrapper returning a coroutine
                return await asyncio.wait_for(result, self.timeout)
            return result
        except TimeoutError:
            raise HookError(f"no answer within {self.timeout:g}s") from None
