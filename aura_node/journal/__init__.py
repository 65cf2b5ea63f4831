"""The append-only signed journal: every piece of protocol evidence a device persists.

Public surface (this package never imports trio; the Trio group-commit front end lives in
``aura_node.journal.group_commit`` and is imported explicitly where needed):

* ``JournalRecord``, ``JournalEntry``, ``Checkpoint`` (``format``): the record codec;
* ``Journal`` (``store``): open/recover, ``append_batch``, ``records``, ``session_records``,
  ``sessions``, ``latest_checkpoint``, ``close``;
* ``verify_journal`` / ``VerifyReport``: read-only verification for ``aura-node journal verify``.
"""

from aura_node.journal.format import (
    CHECKPOINT_KIND,
    Checkpoint,
    JournalEntry,
    JournalRecord,
)
from aura_node.journal.store import Journal, VerifyReport, verify_journal

__all__ = [
    "CHECKPOINT_KIND",
    "Checkpoint",
    "Journal",
    "JournalEntry",
    "JournalRecord",
    "VerifyReport",
    "verify_journal",
]
