"""Xen-API failures turned into sentences that say what went wrong and what to do."""

from __future__ import annotations

from .connection import XenAPIFailure

MESSAGES = {
    "SESSION_AUTHENTICATION_FAILED": "the user name or password was refused; check --user/--password, "
                                     "XM_USER/XM_PASSWORD or ~/.xm.conf",
    "SESSION_INVALID": "the session expired; run the command again",
    "HANDLE_INVALID": "no {0} {1} exists (it may have been deleted); list them again",
    "UUID_INVALID": "no {0} has the uuid {1}",
    "RBAC_PERMISSION_DENIED": "your role may not do {0}; log in as a user with more rights",
    "MESSAGE_METHOD_UNKNOWN": "the server does not know {0}; it may be older than this xm",
    "NOT_IMPLEMENTED": "this server's backend cannot do that ({0} is missing)",
    "OPERATION_NOT_ALLOWED": "{0}",
    "VALUE_NOT_SUPPORTED": "{0} cannot be {1}: {2}",
    "FIELD_TYPE_ERROR": "{0} has the wrong type",
    "MAP_DUPLICATE_KEY": "{3} is already set in {1}; remove it first",
    "INTERNAL_ERROR": "the server failed unexpectedly ({0}); please report it",
}


def explain(failure: XenAPIFailure) -> str:
    template = MESSAGES.get(failure.code)
    if template is None:
        return f"{failure.code} {' '.join(failure.params)}".strip()
    try:
        return template.format(*failure.params)
    except IndexError:
        return f"{failure.code} {' '.join(failure.params)}".strip()
