"""structlog set-up: one event per line, JSON when not on a terminal, readable when on one.

Secrets never reach a log line. Two guards, both in the processor chain so no call site can
forget them: any ``bytes`` value is replaced by ``"<N bytes redacted>"`` (log a hex digest or a
fingerprint on purpose instead), and values under sensitive key names (``secret``, ``share``,
``seed``, ``private_key``, ``key_material``, ``plaintext``) are replaced by ``"<redacted>"``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SENSITIVE_KEYS = frozenset(
    {"secret", "share", "shares", "seed", "private_key", "key_material", "plaintext", "sk"}
)


def redact_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key in SENSITIVE_KEYS:
            event_dict[key] = "<redacted>"
        elif isinstance(value, bytes | bytearray | memoryview):
            event_dict[key] = f"<{len(value)} bytes redacted>"
    return event_dict


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for this process. ``fmt`` is ``auto``, ``json`` or ``console``."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **initial: Any) -> Any:
    """A bound structlog logger carrying ``logger=name`` and any initial context."""
    return structlog.get_logger(name).bind(logger=name, **initial)
