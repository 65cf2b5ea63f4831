"""Control commands of the threshold protocols: account genesis, DKD, guardian recovery,
resharing (``account.add|remove|guardians|reshare``: one reshare session each, this device
coordinating; the reply waits for the session's durable end and carries the new epoch).

Theory of operation
-------------------
The protocol packages are pure (no trio); this module is their shell-side face on the control
socket. It is listed in ``handlers.HANDLER_MODULES``, so ``control_handlers(node)`` merges
:func:`handlers` into the node's request table (``aura_node/control/protocol.py`` names every
command, argument and result field: a contract).

Every handler builds the session parameters with the protocol's own pure helper (the checks
and defaults live next to the protocol, not here), starts the session through the command
channel with :func:`~aura_node.runtime.handlers.start_session` and, for the commands that
return a protocol result (``account.create``, ``dkd``), waits for the session's durable end with
:func:`~aura_node.runtime.handlers.wait_session`. Operator actions on a running session
(``recovery.approve`` on a guardian, ``recovery.veto`` on an account device) go through
:func:`~aura_node.runtime.handlers.control_session`: the reply is released only after the
action's effects (the signed approval, the veto) are in the journal.

``dkd.sign`` and ``dkd.export`` run a DKD with this device as the requester (as ``dkd``) and
take the derived seed from the completed initiator in this node's session table
(``DkdInitiator.derived_seed``): it exists in this process's memory only, is used for the one
signature or the one PKCS#8 file the operator asked for (created 0600 with ``O_EXCL``, never
over an existing file), and is derived afresh for the next request. Paths are absolute: the
node's working directory is not the operator's.

``dkd.pending`` / ``dkd.approve`` / ``dkd.refuse`` are the participant's side of consent: a
request its policy parks for the operator (``approval = "operator"``) waits in the
``Consenting`` phase; ``pending`` lists those, ``approve`` / ``refuse`` run the participant's
``approve`` / ``refuse`` control action, whose reply comes once the signed answer (commitment
or refusal) is journaled. An unknown session is ``not_found``; one that is not a DKD this node
is asked in, has ended, or is not waiting for the operator is ``conflict``/``invalid_args``
with the reason.

Read-only views (``account.show``, ``recovery.pending``, ``recovery.status``) read the
node's account store and session table directly: the session runtime is single-threaded, so a
read between two steps is consistent, and the account store holds only accounts whose
``account.established`` record is durable (folded at start-up, and by the executor's
post-commit hook at run time). A session's *end* is reported only once it is durable
(``recovery.status`` waits for the session's final outcome, which the executor resolves after
the fsync), so ``recovery status`` saying Completed means ``account show`` sees the account.

Errors: bad operator input (an unknown peer, a threshold that does not fit, no account yet)
is ``invalid_args`` / ``not_found`` / ``conflict`` with the protocol helper's message; a
session that fails answers with ``session_failed`` (or ``timeout``) and the driver's reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from aura_node.control import protocol as p
from aura_node.crypto.dkd import DerivedSeed
from aura_node.errors import AuraError
from aura_node.protocols.engine import ParamsError
from aura_node.runtime.handlers import (
    Handler,
    RunningNode,
    control_session,
    start_session,
    wait_session,
)
from aura_node.sessions import (
    IncompatibleVersionError,
    SessionEntry,
    SessionFailedError,
    UnknownSessionError,
)

if TYPE_CHECKING:
    from aura_node.protocols.reshare.roles import Operation

#: seconds a handler waits beyond a session's own deadline: the driver's deadline fails the
#: session first (with a reason naming the phase); this only covers that failure's commit
WAIT_GRACE_SECONDS = 2.0
#: how long ``recovery.status`` waits for the group commit of a session's last step
STATUS_COMMIT_WAIT_SECONDS = 5.0
#: the largest file ``dkd.sign`` signs (Ed25519 signs the whole message in memory)
MAX_SIGN_BYTES = 64 * 1024 * 1024


def _need_ready(node: RunningNode) -> None:
    if not node.ready or node.runtime is None:
        raise p.NotReadyError("the node is starting (rehydrating or links not listening)")


async def _start(node: RunningNode, choreography: str, roles: Mapping[str, str],
                 params: Mapping[str, Any]) -> str:
    """Start a session; operator errors (params, unknown peers) become ``invalid_args``."""
    try:
        return await start_session(node, choreography, roles=roles, params=params)
    except (SessionFailedError, IncompatibleVersionError):
        raise  # not the operator's arguments: the session itself (or the peer's version)
    except AuraError as exc:
        raise p.InvalidArgsError(exc.message) from None


def _entry(node: RunningNode, session: str) -> SessionEntry:
    assert node.runtime is not None
    try:
        return node.runtime.get(session)
    except UnknownSessionError as exc:
        raise p.NotFoundError(exc.message) from None


def _recovery_entry(node: RunningNode, session: str) -> SessionEntry:
    entry = _entry(node, session)
    if entry.choreography != "recovery":
        raise p.InvalidArgsError(
            f"session {session} runs {entry.choreography}, not recovery")
    return entry


def recovery_state(entry: SessionEntry) -> str:
    """The recovery's local state name, ``Vetoed`` for a session a veto ended on any node.

    Every recovery driver reports ``Vetoed`` itself (a peer's abort that carries the ``vetoed``
    code included); a session that ended before the last restart has no driver left, so its
    journaled failure is read instead.
    """
    from aura_node.protocols.recovery.roles import failure_is_veto

    if entry.driver is not None:
        try:
            return str(entry.driver.status().get("state") or entry.state)
        except Exception:  # a status bug must not break the view
            pass
    if entry.error is not None and failure_is_veto(entry.error.get("code", ""),
                                                   entry.error.get("reason", "")):
        return "Vetoed"
    return entry.state


def recovery_view(entry: SessionEntry, services: Any = None) -> dict[str, Any]:
    """``recovery.status``: session, account, state, approvals (+ role, outcome, error).

    ``approvals`` are guardian names (the contract); a role that knows an approval only by its
    signer's device id is given the pinned name when ``services`` knows it."""
    status: dict[str, Any] = {}
    if entry.driver is not None:
        try:
            status = dict(entry.driver.status())
        except Exception as exc:
            status = {"error": repr(exc)}
    result = entry.result or {}
    out: dict[str, Any] = {
        "session": entry.id,
        "account": status.get("account") or result.get("account") or "",
        "state": recovery_state(entry),
        "approvals": [_name_of(services, str(a)) for a in status.get("approvals") or []],
        "role": entry.role,
        "outcome": entry.outcome,
    }
    for key in ("guardians", "shares", "new_device", "notified_by", "approved", "vetoed"):
        if key in status:
            out[key] = status[key]
    if entry.error is not None:
        out["error"] = dict(entry.error)
    return out


def _name_of(services: Any, who: str) -> str:
    if services is None:
        return who
    name = services.name_of_device(who)
    return str(name) if name else who


def handlers(node: RunningNode) -> dict[str, Handler]:
    """The protocol commands of ``node`` (see ``HANDLER_MODULES``)."""

    def services() -> Any:
        assert node.runtime is not None
        return node.runtime.services

    # --- account genesis ----------------------------------------------------------------

    async def account_create(args: dict[str, Any]) -> dict[str, Any]:
        from aura_node.protocols.genesis.roles import parse_params

        _need_ready(node)
        if len(services().accounts):
            held = ", ".join(sorted(services().accounts.accounts()))
            raise p.ConflictError(f"this device holds an account already ({held})")
        devices = list(args["devices"])
        guardians = list(args.get("guardians") or [])
        try:
            params = parse_params({
                "devices": devices, "threshold": args["threshold"], "guardians": guardians,
                "guardian_threshold": args.get("guardian_threshold"),
                "timeout": args.get("timeout"),
            })
        except ParamsError as exc:
            raise p.InvalidArgsError(exc.message) from None
        me = node.name
        roles = {me: "dealer"}
        for name in params.devices:
            roles.setdefault(name, "devices")
        for name in params.guardians:
            roles.setdefault(name, "guardians")
        timeout = params.timeout or node.config.protocols.genesis_timeout_seconds
        # journaled with the start: a replay then does not depend on the node's config
        sid = await _start(node, "genesis", roles, {**params.to_json(), "timeout": timeout})
        return await wait_session(node, sid, timeout + WAIT_GRACE_SECONDS)

    async def account_show(_args: dict[str, Any]) -> dict[str, Any]:
        _need_ready(node)
        held = services().accounts.accounts()
        if not held:
            raise p.NotFoundError(
                f"this device ({node.name}) holds no account: create one with "
                "`ctl account create` or recover one with `ctl recovery start`")
        if len(held) > 1:
            raise p.ConflictError(
                f"this device holds {len(held)} accounts ({', '.join(sorted(held))})")
        # the current epoch's record, its holders and any concurrent-reshare conflicts
        # (AccountStore.show: one implementation for every caller)
        (account_id,) = held
        out: dict[str, Any] = services().accounts.show(account_id)
        return out

    # --- resharing (account lifecycle) ----------------------------------------------------

    def _reshare(operation: Operation) -> Handler:
        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            from aura_node.protocols.reshare.roles import plan_session, session_roles

            _need_ready(node)
            try:
                params = plan_session(args, services(), operation=operation)
            except ParamsError as exc:
                raise p.InvalidArgsError(exc.message) from None
            sid = await _start(node, "reshare", session_roles(params, node.name), params)
            result = await wait_session(node, sid, float(params["timeout"]) + WAIT_GRACE_SECONDS)
            return {"session": sid, **result}

        return handler

    # --- DKD ----------------------------------------------------------------------------

    async def dkd(args: dict[str, Any]) -> dict[str, Any]:
        from aura_node.protocols.dkd.roles import session_params, session_roles

        _need_ready(node)
        try:
            params = session_params(args, services())
        except ParamsError as exc:
            raise p.InvalidArgsError(exc.message) from None
        sid = await _start(node, "dkd", session_roles(params), params)
        wait = float(params["timeout"]) + WAIT_GRACE_SECONDS
        # parked until the session ends (thousands may be): keep no copy of the request alive
        del args, params
        return await wait_session(node, sid, wait)

    async def _derived_seed(args: dict[str, Any]) -> tuple[dict[str, Any], DerivedSeed]:
        """Run a DKD for ``args`` (as ``dkd``) and take the derived seed from this node's
        completed initiator: in memory, never in the journal, a log or a reply. Each call
        derives afresh (the key is not stored anywhere)."""
        from aura_node.protocols.dkd.roles import DkdInitiator

        result = await dkd({k: args[k] for k in ("context", "participants", "timeout")
                            if args.get(k) is not None})
        value = getattr(_entry(node, str(result["session"])).driver, "value", None)
        seed = value.derived_seed() if isinstance(value, DkdInitiator) else None
        if seed is None or seed.public_key.hex() != result["public_key"]:
            raise p.ConflictError(f"dkd session {result['session']} left no derived key on "
                                  "this device")
        return result, seed

    def _absolute(path: object, what: str) -> Path:
        out = Path(str(path))
        if not out.is_absolute():
            raise p.InvalidArgsError(f"{what} must be an absolute path (the node's working "
                                     f"directory is not yours), got {str(path)[:200]!r}")
        return out

    async def dkd_sign(args: dict[str, Any]) -> dict[str, Any]:
        _need_ready(node)
        path = _absolute(args["file"], "file")
        try:
            size = (await trio.Path(path).stat()).st_size
            if size > MAX_SIGN_BYTES:
                raise p.InvalidArgsError(f"{path}: {size} bytes, at most {MAX_SIGN_BYTES} "
                                         "can be signed")
            data = await trio.Path(path).read_bytes()
        except OSError as exc:
            raise p.InvalidArgsError(f"cannot read {path}: {exc.strerror}") from None
        result, seed = await _derived_seed(args)
        return {"session": result["session"], "context": result["context"],
                "fingerprint": seed.fingerprint, "public_key": seed.public_key.hex(),
                "signature": seed.sign(data).hex()}

    async def dkd_export(args: dict[str, Any]) -> dict[str, Any]:
        _need_ready(node)
        out = _absolute(args["out"], "out")
        if await trio.Path(out).exists():
            raise p.ConflictError(f"{out} exists: refusing to overwrite it")
        result, seed = await _derived_seed(args)
        try:
            # O_EXCL: never replace a file that appeared meanwhile; 0600 from the start
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise p.ConflictError(f"{out} exists: refusing to overwrite it") from None
        except OSError as exc:
            raise p.InvalidArgsError(f"cannot create {out}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(seed.pkcs8_pem())
        return {"session": result["session"], "context": result["context"],
                "fingerprint": seed.fingerprint, "public_key": seed.public_key.hex(),
                "path": str(out)}

    def _parked(session: str) -> SessionEntry:
        entry = _entry(node, session)
        if entry.choreography != "dkd":
            raise p.InvalidArgsError(f"session {session} runs {entry.choreography}, not dkd")
        if entry.role != "participants":
            raise p.InvalidArgsError(f"this node requested dkd session {session}; only a "
                                     "participant asked for its part approves or refuses")
        if not entry.active:
            why = f": {entry.error['code']}" if entry.error else ""
            raise p.ConflictError(f"dkd session {session} has ended ({entry.outcome}{why})")
        return entry

    async def dkd_pending(_args: dict[str, Any]) -> dict[str, Any]:
        from aura_node.protocols.dkd.roles import DkdParticipant

        _need_ready(node)
        assert node.runtime is not None
        now = time.time()
        out = []
        for e in node.runtime.active_sessions():
            value = getattr(e.driver, "value", None)
            if isinstance(value, DkdParticipant) and value.awaiting_operator():
                v = value.describe()
                out.append({"session": e.id, "account": v["account"],
                            "requester": v["requester"], "context": v["context"],
                            "age": round(max(0.0, now - float(v["requested_at"])), 3)})
        return {"pending": sorted(out, key=lambda x: str(x["session"]))}

    async def dkd_approve(args: dict[str, Any]) -> dict[str, Any]:
        return await _act(str(args["session"]), "approve", {}, _parked)

    async def dkd_refuse(args: dict[str, Any]) -> dict[str, Any]:
        reason = args.get("reason")
        return await _act(str(args["session"]), "refuse",
                          {} if reason is None else {"reason": str(reason)}, _parked)

    # --- guardian recovery ----------------------------------------------------------------

    async def recovery_start(args: dict[str, Any]) -> dict[str, Any]:
        from aura_node.protocols.recovery.roles import session_roles, start_params

        _need_ready(node)
        try:
            params = start_params(args, services())
        except ParamsError as exc:
            raise p.InvalidArgsError(exc.message) from None
        sid = await _start(node, "recovery", session_roles(params), params)
        # the recovery takes the cooldown: answer now, `recovery status` follows it
        view = recovery_view(_entry(node, sid), services())
        return {"session": sid, "account": params["account"],
                "guardians": list(params["guardians"]), "state": view["state"]}

    async def _act(session: str, action: str, args: Mapping[str, Any],
                   check: Callable[[str], SessionEntry] | None = None) -> dict[str, Any]:
        """An operator action on ``session`` after ``check`` (default: it is a recovery)."""
        _need_ready(node)
        if check is None:
            _recovery_entry(node, session)
        else:
            check(session)
        try:
            reply = await control_session(node, session, action, args)
        except UnknownSessionError as exc:
            raise p.ConflictError(exc.message) from None
        if "error" in reply:
            # the driver refused (wrong phase, wrong role) without changing anything
            raise p.ConflictError(f"cannot {action} session {session}: {reply['error']}")
        return {"session": session, "state": reply.get("state", ""), **reply}

    async def recovery_approve(args: dict[str, Any]) -> dict[str, Any]:
        session = str(args["session"])
        entry = _recovery_entry(node, session)
        if entry.role != "guardians":
            raise p.InvalidArgsError(
                f"only a guardian approves a recovery; this node is {entry.role} in {session}")
        return await _act(session, "approve", {})

    async def recovery_veto(args: dict[str, Any]) -> dict[str, Any]:
        session = str(args["session"])
        entry = _recovery_entry(node, session)
        if entry.role != "devices":
            raise p.InvalidArgsError(
                f"only an account device vetoes a recovery; this node is {entry.role} in "
                f"{session}")
        return await _act(session, "veto", {})

    async def recovery_pending(_args: dict[str, Any]) -> dict[str, Any]:
        from aura_node.protocols.recovery.roles import GuardianDriver

        _need_ready(node)
        assert node.runtime is not None
        # a guardian whose operator has a decision to make
        views = [e.driver.status() for e in node.runtime.active_sessions()
                 if isinstance(e.driver, GuardianDriver)]
        pending = [{k: v[k] for k in ("session", "account", "new_device")}
                   for v in views if v["phase"] == "Deciding"]
        return {"pending": sorted(pending, key=lambda x: str(x["session"]))}

    async def recovery_status(args: dict[str, Any]) -> dict[str, Any]:
        _need_ready(node)
        entry = _recovery_entry(node, str(args["session"]))
        if not entry.active and not entry.final.done:
            # the session ended in a step whose records are not durable yet: report the end
            # only once it is (so a following `account show` sees the recovered account)
            with trio.move_on_after(STATUS_COMMIT_WAIT_SECONDS):
                try:
                    await entry.final.wait()
                except AuraError:
                    pass  # failed: the view below says how
        return recovery_view(entry, services())

    return {
        "account.create": account_create,
        "account.show": account_show,
        "account.add": _reshare("add-device"),
        "account.remove": _reshare("remove-device"),
        "account.guardians": _reshare("guardians"),
        "account.reshare": _reshare("reshare"),
        "dkd": dkd,
        "dkd.sign": dkd_sign,
        "dkd.export": dkd_export,
        "dkd.pending": dkd_pending,
        "dkd.approve": dkd_approve,
        "dkd.refuse": dkd_refuse,
        "recovery.start": recovery_start,
        "recovery.approve": recovery_approve,
        "recovery.pending": recovery_pending,
        "recovery.veto": recovery_veto,
        "recovery.status": recovery_status,
    }
