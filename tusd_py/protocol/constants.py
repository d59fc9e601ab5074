"""The protocol's fixed names in one table: media type, extensions, CORS header lists, hooks.

Each name is written here once; the handler, the CORS headers, the config and the hooks
read it from here.
"""

from __future__ import annotations

from typing import Literal, get_args

#: The Content-Type of a PATCH body (and of a creation-with-upload POST body).
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

#: tus extensions in the order OPTIONS lists them in ``Tus-Extension``.
EXTENSIONS = (
    "creation", "creation-with-upload", "creation-defer-length", "expiration",
    "checksum", "termination", "concatenation", "concatenation-unfinished",
)

#: Response headers a browser page may read (everything tus clients need).
EXPOSE_HEADERS = (
    "Location", "Upload-Offset", "Upload-Length", "Upload-Defer-Length", "Upload-Metadata",
    "Upload-Concat", "Upload-Expires", "Tus-Version", "Tus-Resumable", "Tus-Max-Size",
    "Tus-Extension", "Tus-Checksum-Algorithm", "Content-Disposition", "Content-Range",
)
#: Request headers a browser page may send (the answer to a CORS preflight).
ALLOW_HEADERS = (
    "Authorization", "Origin", "X-Requested-With", "X-Request-ID", "X-HTTP-Method-Override",
    "Content-Type", "Upload-Length", "Upload-Offset", "Tus-Resumable", "Upload-Metadata",
    "Upload-Defer-Length", "Upload-Concat", "Upload-Checksum", "Range",
)
#: Methods a browser page may use (the default of ``server.cors.allowed_methods``).
ALLOW_METHODS = ("POST", "HEAD", "PATCH", "OPTIONS", "GET", "DELETE")

#: Hook events: tusd's names, plus ``pre-access`` (before HEAD/PATCH/GET/DELETE of an
#: existing upload), which tusd does not have.
HookName = Literal["pre-create", "post-create", "post-receive", "pre-finish", "post-finish",
                   "pre-terminate", "post-terminate", "pre-access"]
HOOK_TYPES: tuple[HookName, ...] = get_args(HookName)
(PRE_CREATE, POST_CREATE, POST_RECEIVE, PRE_FINISH, POST_FINISH, PRE_TERMINATE, POST_TERMINATE,
 PRE_ACCESS) = HOOK_TYPES
