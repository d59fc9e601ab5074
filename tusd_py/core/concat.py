"""Concatenation: the life of a final upload made of partial uploads.

Creating a final (POST ``Upload-Concat: final;...``), assembling it once every partial
is complete (at once, or at a later HEAD/GET with concatenation-unfinished), and the
lifetime of an unfinished final, which lives as long as its partials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..config import Config
from ..protocol import Metadata
from ..protocol.errors import BadRequest, Gone, SizeExceeded, TusError
from ..protocol.headers import MAX_INT
from ..storage.base import CanConcatenate, CanTerminate, Capability, Store, Upload
from ..storage.ids import is_upload_id
from .events import EventBus
from .writers import WriterRegistry

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)


class Concatenation:
    """The concatenation and concatenation-unfinished extensions over one store.

    ``next_expiry(now, complete)`` is the handler's expiry policy (when an upload written
    at ``now`` expires)."""

    def __init__(self, config: Config, store: Store, events: EventBus, writers: WriterRegistry,
                 next_expiry: Callable[[float, bool], float | None]) -> None:
        self.store = store
        self.events = events
        self.writers = writers
        self.next_expiry = next_expiry
        self.caps = store.capabilities
        self.base_path = config.server.base_path
        self.max_size = config.server.max_size
        self.max_partials = config.server.max_concat_partials
        self.expire_after = config.expiration.after

    async def create_final(self, request: web.Request, urls: tuple[str, ...],
                           metadata: Metadata, now: float) -> Upload:
        """Create the final upload of the partials at ``urls``; assembled at once when
        they are all complete.

        Each partial may be named once and at most ``server.max_concat_partials`` of
        them (400); the sum of their lengths is held to ``server.max_size`` and to the
        protocol's 2**63-1 (413)."""
        if len(urls) > self.max_partials:
            raise BadRequest(f"a final upload may name at most {self.max_partials} partial "
                             "uploads (server.max_concat_partials)")
        ids = [self._partial_id(url) for url in urls]
        if len(set(ids)) != len(ids):
            raise BadRequest("a final upload may name each partial upload only once")
        partials = []
        for upload_id in ids:
            if self.events.access_checkers:  # the caller may only use partials it may access
                await self.events.pre_access(upload_id, request, "POST")
            partial = await self.store.get(upload_id)
            if partial is None:
                raise BadRequest(f"partial upload {upload_id} not found")
            if partial.is_expired(time.time()):
                raise Gone()
            if not partial.is_partial:
                raise BadRequest(f"upload {upload_id} is not a partial upload")
            if not partial.is_complete and Capability.CONCATENATE_UNFINISHED not in self.caps:
                raise BadRequest("one of the partial uploads is not finished")
            partials.append(partial)
        lengths = [p.length for p in partials if p.length is not None]
        length = sum(lengths) if len(lengths) == len(partials) else None
        if length is not None:
            self._check_length(length)
        upload = Upload(id=self.store.new_upload_id(), length=length, offset=0, metadata=metadata,
                        created_at=now, expires_at=self.next_expiry(now, False),
                        final_of=tuple(ids))
        upload = await self.events.pre_create(upload, request)
        if not is_upload_id(upload.id):
            raise TusError("pre-create hook returned an invalid upload id", status=500)
        upload = await self.store.create(upload)
        self.events.created(upload, request)
        if all(p.is_complete for p in partials):
            upload = await self._assemble(request, upload, partials)
        return upload

    def _check_length(self, length: int) -> None:
        """A final's length within ``server.max_size`` and what a header can say (413)."""
        if self.max_size and length > self.max_size:
            raise SizeExceeded("maximum upload size exceeded")
        if length > MAX_INT:
            raise SizeExceeded("the final upload would be longer than 2**63-1 bytes")

    def _partial_id(self, url: str) -> str:
        path = urlsplit(url).path
        if not path.startswith(self.base_path):
            raise BadRequest(f"invalid partial upload URL {url[:100]!r}")
        upload_id = path[len(self.base_path):]
        if not is_upload_id(upload_id):
            raise BadRequest(f"invalid partial upload URL {url[:100]!r}")
        return upload_id

    async def assemble_final(self, request: web.Request, final: Upload) -> Upload:
        """concatenation-unfinished: assemble an unfinished final once its partials are
        all complete (unchanged until then)."""
        partials = []
        for upload_id in final.final_of:
            partial = await self.store.get(upload_id)
            if partial is None:
                raise Gone(f"partial upload {upload_id} no longer exists")
            if not partial.is_complete:
                return final
            partials.append(partial)
        if final.length is None:
            length = sum(p.offset for p in partials)
            self._check_length(length)  # it stays unfinished, and expires with its partials
            final = final.copy(length=length)
        return await self._assemble(request, final, partials)

    async def _assemble(self, request: web.Request, final: Upload,
                        partials: list[Upload]) -> Upload:
        """Assemble a final upload whose partials are all complete (under its lock)."""
        writer, lock = await self.writers.claim(final.id)
        try:
            if lock.upload.is_complete:  # another request got there first
                return lock.upload
            final = lock.upload.copy(expires_at=self.next_expiry(time.time(), True))
            store = self.store
            assert isinstance(store, CanConcatenate)  # creating a final checked caps
            try:
                final = await store.concatenate(final, partials)
            except Exception:
                # A partial deleted meanwhile, a full disk: whatever was copied is junk.
                await self._discard(request, lock.upload)
                await self._check_partials_exist(partials)
                raise
        finally:
            await self.writers.release(writer, lock)
        await self.events.pre_finish(final, request)
        self.events.finished(final, request)
        return final

    async def _discard(self, request: web.Request, final: Upload) -> None:
        """Remove a final whose assembly failed (under its lock), so it leaves nothing."""
        store = self.store
        if not isinstance(store, CanTerminate):
            return
        try:
            await store.terminate(final.id)
        except Exception:
            log.exception("upload %s: could not remove the final upload whose assembly "
                          "failed", final.id)
            return
        log.warning("upload %s: assembling the final upload failed; it was removed", final.id)
        self.events.terminated(final, request)

    async def _check_partials_exist(self, partials: list[Upload]) -> None:
        """After a failed assembly: a partial that is gone explains it (410)."""
        for partial in partials:
            if await self.store.get(partial.id) is None:
                raise Gone(f"partial upload {partial.id} no longer exists")

    async def final_lives_until(self, final: Upload, now: float) -> float | None:
        """An unfinished final (concatenation-unfinished) lives as long as its partials:
        the latest expiry among them, or a fresh period once all are complete (it is
        assembled at the next HEAD/GET). None once a partial is gone or expired."""
        lives: list[float] = []
        for upload_id in final.final_of:
            partial = await self.store.get(upload_id)
            if partial is None or partial.is_expired(now):
                return None
            if not partial.is_complete and partial.expires_at is not None:
                lives.append(partial.expires_at)
        return max(lives) if lives else now + (self.expire_after or 86400.0)

    async def prolong_final(self, final: Upload) -> Upload:
        """An expired unfinished final whose partials are alive gets their lifetime."""
        until = await self.final_lives_until(final, time.time())
        if until is None:
            raise Gone()
        writer, lock = await self.writers.claim(final.id)
        try:
            if lock.upload.is_complete or not lock.upload.is_expired(time.time()):
                return lock.upload
            return await lock.commit(expires_at=until)
        finally:
            await self.writers.release(writer, lock)
