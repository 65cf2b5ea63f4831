"""Runtime witnesses: values that can only exist if their evidence verified.

Theory of operation
-------------------

A transition that needs "a threshold of valid commitments" takes a *witness* argument
(``CollectedCommitments``, ``ApprovalThresholdMet``, ...). The type says what was proven; the
value carries the proof - the verified evidence itself, never a boolean - so later steps use the
very items that were checked (DESIGN.md invariant 3).

Unforgeability, in layers:

* :class:`NoPublicConstructor` (Trio's idea): calling a witness class raises ``TypeError``;
  ``Cls._create(...)`` is the only way in, and only a verification function in the witness's
  own module calls it. Witness ``__init__`` takes a private ``_Seal`` argument, so mypy also
  rejects ``Witness(...)`` at the call site ("Missing positional argument").
* Concrete witnesses are ``@final``; the runtime also refuses to subclass a witness class not
  declared ``abstract=True``. Abstract bases cannot be ``_create``-d.
* Pickling a witness is refused (unpickling would skip verification); ``copy`` returns the same
  immutable object.
* Not closed: ``object.__new__(Cls)`` makes an instance with no fields (reading one raises
  ``AttributeError``), and ``Cls._create`` is reachable by anyone who ignores the underscore.
  Python has no way to close these; code review and the ``_create`` grep are the control.

The reusable part is :func:`verify_threshold_evidence`: over signed statements it checks every
signature (``DevicePublicKey.verify(domain, ...)``), membership, session and choreography,
duplicates (identical statements from one signer collapse to one; *different* statements from
one signer are equivocation: the signer is excluded and both statements kept as evidence against
it), and the threshold of distinct honest signers. Concrete witnesses wrap the resulting
:class:`ThresholdEvidence` (itself a witness).
"""

from __future__ import annotations

import dataclasses
from abc import ABCMeta
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeVar, final

from aura_node.crypto.keys import DeviceKey, DevicePublicKey
from aura_node.errors import BadSignatureError, LocalProtocolError, WitnessError

__all__ = [
    "Equivocation",
    "NoPublicConstructor",
    "QuorumOfSignedStatements",
    "SignedStatement",
    "ThresholdConfigError",
    "ThresholdEvidence",
    "Witness",
    "statement_bytes",
    "verify_statement",
    "verify_threshold_evidence",
]

T = TypeVar("T")


class ThresholdConfigError(LocalProtocolError):
    """Our own caller asked for an impossible threshold (a local bug, not peer input)."""

    code = "threshold_invalid"


class NoPublicConstructor(ABCMeta):
    """Metaclass: ``Cls(...)`` raises ``TypeError``; ``Cls._create(...)`` is the only way in."""

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; obtain one from "
            "its verification function"
        )

    def _create(cls: type[T], **fields: object) -> T:
        if cls.__dict__.get("_aura_abstract", False):
            raise TypeError(f"{cls.__qualname__} is an abstract witness base")
        obj = object.__new__(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if set(fields) != names:
            raise TypeError(
                f"{cls.__qualname__}._create needs exactly the fields {sorted(names)}, "
                f"got {sorted(fields)}"
            )
        for name, value in fields.items():
            object.__setattr__(obj, name, value)
        return obj


@final
class _Seal:
    """Never instantiated: a parameter type nobody outside can satisfy (static guard)."""

    __slots__ = ()


class Witness(metaclass=NoPublicConstructor):
    """Base of every witness. Subclass as ``@final @dataclass(frozen=True, slots=True,
    init=False)`` and build instances only with ``_create`` in a verification function."""

    __slots__ = ()
    _aura_abstract: ClassVar[bool] = True

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            if (
                isinstance(base, NoPublicConstructor)
                and base is not Witness
                and not base.__dict__.get("_aura_abstract", False)
            ):
                raise TypeError(
                    f"{cls.__qualname__} subclasses the concrete witness {base.__qualname__}: a "
                    "subclass could widen what the witness claims"
                )
        cls._aura_abstract = abstract

    def __init__(self, _seal: _Seal, /) -> None:
        raise TypeError(f"{type(self).__qualname__} has no public constructor")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(
            f"a {type(self).__qualname__} witness cannot be pickled: unpickling would skip its "
            "verification; journal the evidence and verify it again"
        )

    def __copy__(self: T) -> T:
        return self  # immutable: a copy is the same proof

    def __deepcopy__(self: T, memo: object) -> T:
        return self


# --- signed statements -------------------------------------------------------------------------


def statement_bytes(*, session_id: str, choreography: str, payload: bytes) -> bytes:
    """The message a statement's signature covers (after the domain prefix of keys.py).

    Length-prefixed fields, so no two (session, choreography, payload) triples share bytes.
    """
    parts = [choreography.encode("utf-8"), session_id.encode("utf-8"), payload]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedStatement:
    """One signed evidence item: ``signer`` says ``payload`` in ``session_id`` of
    ``choreography``. Unverified until it passes :func:`verify_statement`."""

    signer: DevicePublicKey
    session_id: str
    choreography: str
    payload: bytes
    signature: bytes

    @classmethod
    def sign(
        cls, key: DeviceKey, *, domain: str, session_id: str, choreography: str, payload: bytes
    ) -> SignedStatement:
        msg = statement_bytes(session_id=session_id, choreography=choreography, payload=payload)
        return cls(
            signer=key.public,
            session_id=session_id,
            choreography=choreography,
            payload=payload,
            signature=key.sign(domain, msg),
        )

    @property
    def signer_id(self) -> str:
        return self.signer.device_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Equivocation:
    """Proof that ``signer`` signed two different statements in one session and domain."""

    signer_id: str
    first: SignedStatement
    second: SignedStatement


def _members_by_id(members: Iterable[DevicePublicKey]) -> dict[str, DevicePublicKey]:
    return {m.device_id: m for m in members}


def verify_statement(
    item: SignedStatement,
    *,
    members: Mapping[str, DevicePublicKey],
    session_id: str,
    choreography: str,
    domain: str,
) -> None:
    """Check one statement (the receipt-time filter); raise ``WitnessError`` saying why not."""
    sid = item.signer_id
    member = members.get(sid)
    if member is None:
        raise WitnessError(
            f"{domain}: signer {sid} is not a member of {choreography} session {session_id}"
        )
    if member != item.signer:
        raise WitnessError(f"{domain}: signer {sid} presented a key that is not its member key")
    if item.session_id != session_id:
        raise WitnessError(
            f"{domain}: statement from {sid} is for session {item.session_id!r}, "
            f"expected {session_id!r}"
        )
    if item.choreography != choreography:
        raise WitnessError(
            f"{domain}: statement from {sid} is for choreography {item.choreography!r}, "
            f"expected {choreography!r}"
        )
    msg = statement_bytes(
        session_id=item.session_id, choreography=item.choreography, payload=item.payload
    )
    try:
        item.signer.verify(domain, msg, item.signature)
    except BadSignatureError as exc:
        raise WitnessError(
            f"{domain}: statement from {sid} in session {session_id} does not verify: "
            f"{exc.message}"
        ) from None


@final
@dataclass(frozen=True, slots=True, init=False)
class ThresholdEvidence(Witness):
    """Verified: at least ``threshold`` distinct honest members signed statements in this
    session and domain. ``statements`` holds one statement per counted signer, sorted by
    device id; ``equivocations`` the excluded signers with their two conflicting statements."""

    domain: str
    session_id: str
    choreography: str
    threshold: int
    members: frozenset[str]
    statements: tuple[SignedStatement, ...]
    equivocations: tuple[Equivocation, ...]

    @property
    def signers(self) -> tuple[str, ...]:
        return tuple(s.signer_id for s in self.statements)

    @property
    def misbehaving(self) -> tuple[str, ...]:
        return tuple(e.signer_id for e in self.equivocations)


def verify_threshold_evidence(
    items: Iterable[SignedStatement],
    *,
    members: Iterable[DevicePublicKey],
    session_id: str,
    choreography: str,
    domain: str,
    threshold: int,
) -> ThresholdEvidence:
    """Verify a pool of statements and return the evidence, or raise ``WitnessError``.

    Strict: any item that fails :func:`verify_statement` fails the pool (the runtime filters at
    receipt, so a bad item here means that filter was skipped). Equivocation is not a failure of
    the pool - it is a finding: the signer is excluded from the count and reported.
    """
    by_id = _members_by_id(members)
    if not 1 <= threshold <= len(by_id):
        raise ThresholdConfigError(
            f"{domain}: threshold must be in 1..{len(by_id)} (members), got {threshold}"
        )
    first: dict[str, SignedStatement] = {}
    conflicts: dict[str, Equivocation] = {}
    for index, item in enumerate(items):
        try:
            verify_statement(
                item, members=by_id, session_id=session_id, choreography=choreography,
                domain=domain,
            )
        except WitnessError as exc:
            raise WitnessError(f"evidence item {index}: {exc.message}") from None
        sid = item.signer_id
        seen = first.get(sid)
        if seen is None:
            first[sid] = item
        elif seen.payload != item.payload and sid not in conflicts:
            # Two validly signed, different statements: only the signer could have made both.
            conflicts[sid] = Equivocation(signer_id=sid, first=seen, second=item)
        # else: the same statement again (a retransmission): counted once.
    honest = sorted((s for sid, s in first.items() if sid not in conflicts),
                    key=lambda s: s.signer_id)
    if len(honest) < threshold:
        excluded = (
            f"; excluded for equivocation: {', '.join(sorted(conflicts))}" if conflicts else ""
        )
        raise WitnessError(
            f"{domain}: {threshold} of {len(by_id)} members needed in {choreography} session "
            f"{session_id}, got {len(honest)} distinct valid signer(s)"
            f" ({', '.join(s.signer_id for s in honest) or 'none'}){excluded}"
        )
    return ThresholdEvidence._create(
        domain=domain,
        session_id=session_id,
        choreography=choreography,
        threshold=threshold,
        members=frozenset(by_id),
        statements=tuple(honest),
        equivocations=tuple(conflicts[k] for k in sorted(conflicts)),
    )


@final
@dataclass(frozen=True, slots=True, init=False)
class QuorumOfSignedStatements(Witness):
    """Example witness: a threshold of members signed statements in one session.

    Concrete protocol witnesses (``CollectedCommitments``, ...) follow this shape: a ``verify``
    class method that runs the generic verifier plus the protocol's own payload checks, and
    carries the :class:`ThresholdEvidence`.
    """

    evidence: ThresholdEvidence

    @classmethod
    def verify(
        cls,
        items: Iterable[SignedStatement],
        *,
        members: Iterable[DevicePublicKey],
        session_id: str,
        choreography: str,
        domain: str,
        threshold: int,
    ) -> QuorumOfSignedStatements:
        evidence = verify_threshold_evidence(
            items,
            members=members,
            session_id=session_id,
            choreography=choreography,
            domain=domain,
            threshold=threshold,
        )
        return cls._create(evidence=evidence)

    @property
    def payloads(self) -> tuple[bytes, ...]:
        return tuple(s.payload for s in self.evidence.statements)
