"""The rules of the IETF draft "Resumable Uploads for HTTP" per interop version, as data.

One frozen ``DraftRules`` per interop version (``RULES``), selected by the request's
``Upload-Draft-Interop-Version`` (``rules_for``); the HTTP side (``tusd_py.core.ietf``)
reads every version difference from it. Also the pure parts of the draft: structured
field values, ``Upload-Limit``, problem details and the length consistency rule. No I/O,
no aiohttp. Where the texts are ambiguous, docs/ietf-draft.md says how they are read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from .errors import BadRequest, TusError
from .headers import MAX_INT

VERSION_HEADER = "Upload-Draft-Interop-Version"
#: The media type of an append body (interop 6 on).
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = "mismatching-upload-offset"
COMPLETED_UPLOAD = "completed-upload"
INCONSISTENT_LENGTH = "inconsistent-upload-length"
#: The metadata key marking an upload created through the draft (its value: the interop
#: version of the creation). tus requests do not reach such an upload, nor the draft a
#: tus upload; a plain GET (download) reaches both.
DRAFT_MARK = "ietf-draft"


@dataclass(frozen=True, slots=True)
class DraftRules:
    """What one interop version asks of a server (only what differs between versions)."""

    version: int
    #: The published drafts that carry this number.
    drafts: str
    #: ``Upload-Incomplete`` (3: ``?1`` = more to come) or ``Upload-Complete`` (4 on).
    complete_header: str
    #: A request without the completeness header: complete (True, as Apple's server reads
    #: 3 to 6) or refused with 400 (None: the header is required from 7).
    missing_complete: bool | None
    #: An append must be ``Content-Type: application/partial-upload`` (6 on).
    partial_media_type: bool
    #: The problem types this version defines (RFC 9457 bodies on the refusals).
    problems: frozenset[str]
    #: ``Upload-Length`` is defined (-05, interop 6, on): offset retrieval responses carry
    #: it. Requests' ``Upload-Length`` is read in every version, as tusd does:
    #: tus-js-client's draft-03 mode (interop 5) sends it and may never send a completing
    #: request (it stops once its offset reaches the length).
    upload_length: bool
    #: ``Upload-Limit`` is defined (6 on): OPTIONS, creation, 104, HEAD and 413s carry it.
    upload_limit: bool
    #: The ``Upload-Limit`` key of the remaining lifetime: ``expires`` (6), ``max-age`` (7 on).
    expiry_key: str | None
    #: GET is an offset retrieval as HEAD is (9 on); before, GET is a download.
    get_retrieves_offset: bool
    #: Fields a successful offset retrieval must carry (10 drops the completeness header
    #: and ``Upload-Length``; this server still sends them, as Apple's does).
    offset_retrieval_requires: tuple[str, ...]
    #: HEAD/DELETE carrying ``Upload-Offset``, the completeness header (or, with
    #: ``upload_length``, ``Upload-Length``) get 400 (3 to 6; the rule is gone in 7).
    strict_retrieval: bool
    #: Status of a successful append that does not complete: 201 (3 to 6), 204 (2xx, 7 on).
    append_status: int
    #: A structured field with an invalid value is ignored (8 on) instead of a 400.
    ignore_invalid_fields: bool
    #: ``Accept-Patch: application/partial-upload`` on OPTIONS (8 only: -10 and -11).
    accept_patch: bool

    def completeness(self, complete: bool) -> tuple[str, str]:
        """The completeness header of a response saying whether the upload is complete."""
        if self.complete_header == "Upload-Incomplete":
            return self.complete_header, "?0" if complete else "?1"
        return self.complete_header, "?1" if complete else "?0"

    def problem(self, kind: str) -> bool:
        return kind in self.problems


def _rules(version: int, drafts: str) -> DraftRules:
    problems = set()
    if version >= 6:
        problems.add(MISMATCHING_OFFSET)
    if 6 <= version <= 8:
        problems.add(COMPLETED_UPLOAD)  # removed in -12 (PR #3405)
    if version >= 7:
        problems.add(INCONSISTENT_LENGTH)
    complete_header = "Upload-Incomplete" if version == 3 else "Upload-Complete"
    required: tuple[str, ...] = (
        ("Upload-Offset",) if version >= 10 else ("Upload-Offset", complete_header))
    if 6 <= version < 10:
        required += ("Upload-Length",)
    if version >= 8:
        required += ("Upload-Limit",)
    return DraftRules(
        version=version, drafts=drafts, complete_header=complete_header,
        missing_complete=True if version <= 6 else None,
        partial_media_type=version >= 6,
        problems=frozenset(problems),
        upload_length=version >= 6,
        upload_limit=version >= 6,
        expiry_key=None if version < 6 else "expires" if version == 6 else "max-age",
        get_retrieves_offset=version >= 9,
        offset_retrieval_requires=required,
        strict_retrieval=version <= 6,
        append_status=201 if version <= 6 else 204,
        ignore_invalid_fields=version >= 8,
        accept_patch=version == 8,
    )


#: Every interop version this server speaks, by number.
RULES: dict[int, DraftRules] = {rules.version: rules for rules in (
    _rules(3, "-01"), _rules(4, "-02"), _rules(5, "-03"), _rules(6, "-04, -05"),
    _rules(7, "-06, -07, -08"), _rules(8, "-09, -10, -11"), _rules(9, "-12"), _rules(10, "-13"),
)}
SUPPORTED = tuple(RULES)

_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")


def rules_for(value: str | None) -> DraftRules | None:
    """The rules of the interop version a request names, or None (absent, not an
    sf-integer, or a version not spoken here)."""
    if value is None:
        return None
    value = value.strip(" \t")
    if not _SF_INTEGER.fullmatch(value):
        return None
    return RULES.get(int(value))


def parse_bool(value: str | None, name: str, rules: DraftRules) -> bool | None:
    """An sf-boolean (``?1`` / ``?0``); None when absent, or invalid where the version
    ignores invalid fields; otherwise an invalid value is a 400."""
    if value is None:
        return None
    value = value.strip(" \t")
    if value == "?1":
        return True
    if value == "?0":
        return False
    if rules.ignore_invalid_fields:
        return None
    raise BadRequest(f"invalid {name} header: not ?1 or ?0")


def parse_int(value: str | None, name: str, rules: DraftRules) -> int | None:
    """A non-negative sf-integer (``Upload-Offset``, ``Upload-Length``), as parse_bool."""
    if value is None:
        return None
    value = value.strip(" \t")
    if _SF_INTEGER.fullmatch(value) and not value.startswith("-") and int(value) <= MAX_INT:
        return int(value)
    if rules.ignore_invalid_fields:
        return None
    raise BadRequest(f"invalid {name} header")


def is_complete(rules: DraftRules, value: str | None) -> bool:
    """Whether a request says it completes the upload (its completeness header)."""
    flag = parse_bool(value, rules.complete_header, rules)
    if flag is None:
        if rules.missing_complete is None:
            raise BadRequest(f"missing {rules.complete_header} header")
        return rules.missing_complete
    return not flag if rules.complete_header == "Upload-Incomplete" else flag


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's limits, for ``Upload-Limit``: 0 / None means none."""

    max_size: int = 0
    max_append_size: int = 0


def upload_limit(rules: DraftRules, limits: Limits, lifetime: float | None) -> str:
    """The ``Upload-Limit`` dictionary (``lifetime``: seconds the upload has left);
    ``min-size=0`` when nothing is limited (-05: OPTIONS always carries the field)."""
    parts = []
    if limits.max_size:
        parts.append(f"max-size={limits.max_size}")
    if limits.max_append_size:
        parts.append(f"max-append-size={limits.max_append_size}")
    if lifetime is not None and rules.expiry_key is not None:
        parts.append(f"{rules.expiry_key}={max(0, math.ceil(lifetime))}")
    return ", ".join(parts) or "min-size=0"


class DraftError(TusError):
    """A refusal the draft defines a problem type for (``kind``), with its members."""

    def __init__(self, kind: str, message: str, *, status: int = 400,
                 members: dict[str, int] | None = None) -> None:
        super().__init__(message, status=status)
        self.kind = kind
        self.members = members or {}


def inconsistent(message: str) -> DraftError:
    return DraftError(INCONSISTENT_LENGTH, message)


def problem_body(kind: str, title: str, members: dict[str, int]) -> bytes:
    """An RFC 9457 problem details object."""
    return json.dumps({"type": PROBLEM_BASE + kind, "title": title, **members}).encode()


def known_length(offset: int, content_length: int | None, complete: bool,
                 declared: int | None, recorded: int | None) -> int | None:
    """The representation's length once a request at ``offset`` is taken into account
    (None: still unknown), or an ``inconsistent`` error: ``Upload-Length`` (``declared``),
    the recorded length and, for a completing request, ``offset + Content-Length`` must
    agree, and no request may write past the length. A completing request without a
    Content-Length (chunked) is checked once its body has ended."""
    length = recorded
    if declared is not None:
        if length is not None and declared != length:
            raise inconsistent("Upload-Length differs from the upload's length")
        if declared < offset:
            raise inconsistent("Upload-Length is smaller than the offset")
        length = declared
    if content_length is not None:
        end = offset + content_length
        if complete:
            if length is not None and end != length:
                raise inconsistent("the completing request does not end at the upload's length")
            length = end
        elif length is not None and end > length:
            raise inconsistent("the request goes past the upload's length")
    return length
