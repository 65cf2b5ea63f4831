"""The node's control socket server (Trio).

Theory of operation
-------------------
``ControlServer(socket_path, handlers, log=...)`` maps request names to async handlers
(``Handler``: args dict in, result dict out) and serves them on a Unix stream socket. The wire
format, the command table and the fault codes live in ``protocol`` (pure); this module only
moves lines between sockets and handlers.

Start-up, in order (the qtile IPC / supervisor recipe):

1. Take ``flock(LOCK_EX | LOCK_NB)`` on ``SOCKET.lock``. Held for the server's lifetime, it
   makes "check for a live node, unlink the stale socket, bind" atomic against a second node
   starting on the same home at the same moment (without it both could see a stale socket and
   the later one would unlink the earlier one's fresh socket).
2. Stale socket detection: if a file is at the path, connect to it. If something answers,
   refuse with ``NodeAlreadyRunningError`` ("another node is running on HOME"); if the
   connection is refused nobody listens: unlink it and log that. A non-socket file there is
   never removed.
3. Create the socket with ``SOCK_CLOEXEC`` and bind it under ``umask(0o177)`` so it is mode
   0600 from the moment it exists (a chmod after bind would leave a window); restore the umask,
   check the mode, listen, and only then report ``task_status.started()``.

Connections and the operator. Open connections are bounded, and no client that merely holds
connections open can lock the operator out:

* a connection must deliver a complete request line within ``request_timeout`` seconds of
  opening (and of the first byte of any later request), else it is closed; between requests
  it may stay silent for ``idle_timeout``;
* past ``max_connections`` open connections, a new one evicts the connection that has waited
  longest for a request (fair eviction: idle and trickling connections only, never one whose
  request is being answered, and never one that has waited less than ``evict_grace``: a
  client sends its request right after connecting, and a monitor polling ``status`` on one
  connection is idle only between polls);
* when no connection can be evicted, the new one is read (its request line,
  within ``busy_read_timeout``, size-limited) and ``RESERVED_COMMANDS`` (``status``,
  ``shutdown``) are answered anyway; anything else gets ``busy``. Reading first matters:
  closing a connection whose request is unread (or not yet sent) resets it, and the client
  would see a reset instead of the refusal. At most ``max_overflow`` such connections are
  read at once; past that one is closed with ``busy`` unread.

Every accepted connection is first checked with ``SO_PEERCRED``: a peer whose uid is not in
``allowed_uids`` (default: the node's own uid) gets one ``forbidden`` reply and is closed. The
mode already keeps other users out; the uid check is the second lock, and it is what protects a
socket whose directory or mode an operator loosened. Tests that cannot switch uid simulate a
foreign peer by passing ``allowed_uids={os.getuid() + 1}``: the real SO_PEERCRED uid (ours) is
then the "other" uid (``tests/integration/test_control_server.py`` does both this and, when run
as root, a real connection from uid 65534).

Requests on one connection are answered in order. Policy for bad input: a malformed line
(``bad_request``), an unknown command or bad arguments get an error reply and the connection
keeps serving (line framing cannot desynchronise); an oversized line gets ``request_too_large``
and the connection is closed (its end is unknown). A handler raising ``AuraError`` is answered
with that error's code and message; any other exception is answered with ``internal`` and
logged with its traceback: the server never crashes because of a handler, nor because of a
request: one whose reply could not be encoded (a lone surrogate escape in its ``id``, numbers
JSON cannot carry back) is refused as ``bad_request`` by ``decode_request``; a reply that still
cannot be encoded becomes an ``internal`` error reply; and anything that escapes all of that
ends the one connection, logged, never the server or the node. Arguments of
commands in ``protocol.COMMANDS`` are validated before the handler runs, and a result missing
documented fields is logged as a node bug.

Shutdown: cancel the scope around ``serve`` (in-flight requests are abandoned), or call
``aclose(grace=...)`` to stop accepting, close idle connections, give in-flight requests up to
``grace`` seconds to send their replies (so the reply to ``shutdown`` itself gets out), then
stop. Either way the socket file is unlinked if it is still ours (same inode).
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import trio

from aura_node.control.address import UnixAddress
from aura_node.control.protocol import (
    COMMANDS,
    MAX_REQUEST_BYTES,
    BadRequestError,
    CommandSpec,
    Fault,
    LineFramer,
    NodeAlreadyRunningError,
    RequestId,
    RequestTooLargeError,
    decode_request,
    encode_message,
    error_reply,
    error_reply_for,
    lone_surrogate_in,
    missing_result_fields,
    ok_reply,
    validate_args,
)
from aura_node.errors import AuraError, ControlError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_PEERCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_RECEIVE_BYTES = 65536


def peer_credentials(sock: trio.socket.SocketType | socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


#: commands an operator can always get through, even when every connection is inside a
#: request (they are answered at once: no session, no waiting)
RESERVED_COMMANDS = frozenset({"status", "shutdown"})


class _Connection:
    __slots__ = ("busy", "overflow", "scope", "waiting_since")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.busy = False
        #: past the limit while every slot was inside a request: holds no slot
        self.overflow = False
        #: when it began waiting for its next request (eviction takes the longest waiting)
        self.waiting_since = trio.current_time()


class ControlServer:
    """Serve ``handlers`` on the Unix socket ``socket_path`` (see the module docstring)."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        handlers: Mapping[str, Handler],
        *,
        log: Any,
        allowed_uids: Collection[int] | None = None,
        specs: Mapping[str, CommandSpec] = COMMANDS,
        max_connections: int = 64,
        idle_timeout: float = 300.0,
        request_timeout: float = 5.0,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        backlog: int = 64,
        busy_read_timeout: float = 1.0,
        max_overflow: int = 64,
        evict_grace: float = 1.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self._handlers = dict(handlers)
        self._log = log
        #: uids allowed to talk to the node; injectable so tests can simulate a foreign peer
        self.allowed_uids = frozenset({os.getuid()} if allowed_uids is None else allowed_uids)
        self._specs = specs
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        self._request_timeout = request_timeout
        self._overflow = 0
        self._max_overflow = max_overflow
        self._evict_grace = evict_grace
        self._max_request_bytes = max_request_bytes
        self._backlog = backlog
        self._busy_read_timeout = busy_read_timeout
        self._conns: set[_Connection] = set()
        self._closing = False
        self._serve_scope = trio.CancelScope()
        self._accept_scope = trio.CancelScope()
        self._request_done = trio.lowlevel.ParkingLot()

    @property
    def home(self) -> Path:
        return self.socket_path.parent

    @property
    def closing(self) -> bool:
        """True once ``aclose`` began: no new connections or requests are taken."""
        return self._closing

    @property
    def connection_count(self) -> int:
        """Open connections holding a slot (those past the limit hold none)."""
        return sum(1 for c in self._conns if not c.overflow)

    # --- lifecycle -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started, serve until cancelled or ``aclose``; unlink on the way out.

        Raises ``NodeAlreadyRunningError`` when a live node owns the socket, ``ControlError``
        when the socket cannot be created.
        """
        lock_fd = self._take_lock()
        try:
            await trio.to_thread.run_sync(self._clear_stale_socket)
            sock, identity = self._bind()
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            self._log.info("control socket listening", path=str(self.socket_path))
            try:
                with self._serve_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._accept_loop, listener, nursery)
                        task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
                self._unlink_if_ours(identity)
                self._log.info("control socket closed", path=str(self.socket_path))
        finally:
            os.close(lock_fd)

    async def aclose(self, *, grace: float = 2.0) -> None:
        """Stop accepting; let in-flight requests reply for up to ``grace`` s; stop serving."""
        self._closing = True
        self._accept_scope.cancel()
        for conn in list(self._conns):
            if not conn.busy:
                conn.scope.cancel()
        with trio.move_on_after(grace):
            while any(c.busy for c in self._conns):
                await self._request_done.park()
        self._serve_scope.cancel()

    def _take_lock(self) -> int:
        lock_path = f"{self.socket_path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ControlError(f"cannot create the control lock file {lock_path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeAlreadyRunningError(
                f"another node is running on {self.home} (it holds {lock_path})"
            ) from None
        return fd

    def _clear_stale_socket(self) -> None:
        path = str(self.socket_path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(
                f"{path} exists and is not a socket; refusing to remove it (move it away)"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
            probe.settimeout(1.0)
            try:
                with UnixAddress(path) as address:
                    probe.connect(address)
            except ConnectionRefusedError:
                pass  # nobody listening: stale
            except FileNotFoundError:
                return
            except TimeoutError:
                # A listener whose backlog is full still is a listener.
                raise NodeAlreadyRunningError(
                    f"another node is running on {self.home}: {path} accepts connections but "
                    "does not answer within 1 s"
                ) from None
            else:
                raise NodeAlreadyRunningError(
                    f"another node is running on {self.home}: something answers on {path}"
                )
        os.unlink(path)
        self._log.warning("removed stale control socket", path=path)

    def _bind(self) -> tuple[socket.socket, tuple[int, int]]:
        path = str(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            old_umask = os.umask(0o177)
            try:
                with UnixAddress(path) as address:
                    sock.bind(address)
            finally:
                os.umask(old_umask)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if mode != 0o600:
                os.unlink(path)
                raise ControlError(f"control socket {path} was created mode {mode:o}, not 600")
            sock.listen(self._backlog)
        except AuraError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot create the control socket {path}: {exc}") from None
        return sock, (st.st_dev, st.st_ino)

    def _unlink_if_ours(self, identity: tuple[int, int]) -> None:
        path = str(self.socket_path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
        else:
            self._log.warning("control socket was replaced; leaving it", path=path)

    # --- connections -------------------------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        with self._accept_scope:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # EMFILE/ENFILE/ENOBUFS: back off instead of spinning (as serve_listeners).
                    self._log.error("control accept failed", error=str(exc))
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection()
        self._conns.add(conn)
        try:
            with conn.scope:
                async with stream:
                    await self._converse(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._log.debug("control client went away", error=str(exc))
        except Exception as exc:
            # Whatever one connection does, the server (and the node around it) serves on:
            # this ends that connection only. Reaching here is a server bug; say so loudly.
            self._log.error("control connection failed", exc_info=exc)
        finally:
            self._conns.discard(conn)
            conn.busy = False
            self._request_done.unpark_all()

    async def _converse(self, stream: trio.SocketStream, conn: _Connection) -> None:
        pid, uid, _gid = peer_credentials(stream.socket)
        if uid not in self.allowed_uids:
            self._log.warning("control connection refused: foreign uid", peer_pid=pid,
                              peer_uid=uid, allowed=sorted(self.allowed_uids))
            await self._send_error(stream, None, Fault.FORBIDDEN,
                                   f"uid {uid} may not use this node's control socket "
                                   f"(allowed: {', '.join(map(str, sorted(self.allowed_uids)))})")
            return
        if self._closing:
            await self._send_error(stream, None, Fault.SHUTTING_DOWN, "the node is stopping")
            return
        if self.connection_count > self._max_connections and not self._evict_one_waiting(conn):
            # Every other connection is inside a request: this one holds no slot.
            conn.overflow = True
            await self._serve_overflow(stream, conn, pid)
            return
        framer = LineFramer(self._max_request_bytes)
        # A fresh connection owes its first request within request_timeout.
        deadline = trio.current_time() + self._request_timeout
        while True:
            data = b""
            with trio.move_on_at(deadline):
                data = await stream.receive_some(_RECEIVE_BYTES)
            if not data:
                if trio.current_time() >= deadline:
                    self._log.info("control connection closed: no request in time", peer_pid=pid,
                                   partial_bytes=framer.pending)
                return  # EOF, or no (complete) request in time
            if framer.pending == 0:
                # the first byte of a request (after an idle spell): the line is now owed
                deadline = min(deadline, trio.current_time() + self._request_timeout)
            try:
                lines = framer.feed(data)
            except RequestTooLargeError as exc:
                self._log.warning("control request too large; closing", error=exc.message,
                                  peer_pid=pid)
                await stream.send_all(self._encode_reply(error_reply_for(None, exc)))
                return
            for line in lines:
                conn.busy = True
                try:
                    reply = await self._answer(line, pid)
                    await stream.send_all(reply)
                finally:
                    conn.busy = False
                    self._request_done.unpark_all()
                if self.closing:  # a property: mypy would keep the narrowing from above
                    return
            if lines:
                conn.waiting_since = trio.current_time()
                # idle between requests; a partial next line already owes its end
                limit = self._request_timeout if framer.pending else self._idle_timeout
                deadline = conn.waiting_since + limit

    def _evict_one_waiting(self, newcomer: _Connection) -> bool:
        """Make room for ``newcomer``: close the connection that has waited longest for a
        request, if that is ``evict_grace`` or more (never one being answered). False when
        there is none: every other one is inside a request or has just begun waiting."""
        since = trio.current_time() - self._evict_grace
        waiting = [c for c in self._conns if c is not newcomer and not c.busy
                   and not c.overflow and c.waiting_since <= since]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.waiting_since)
        self._conns.discard(victim)  # its slot is free now, not when its task gets to run
        victim.scope.cancel()
        self._log.info("control connection evicted: the limit is reached and it waited longest",
                       waited_s=round(trio.current_time() - victim.waiting_since, 3),
                       limit=self._max_connections)
        return True

    async def _serve_overflow(self, stream: trio.SocketStream, conn: _Connection, pid: int
                              ) -> None:
        """A connection beyond the limit and no slot to take: answer a reserved command
        (``status``, ``shutdown``), refuse anything else with ``busy``."""
        message = (f"{self._max_connections} control connections are busy with requests "
                   "(the limit); try again")
        if self._overflow >= self._max_overflow:
            self._log.warning("control connection refused: busy, overflow full", peer_pid=pid)
            await self._send_error(stream, None, Fault.BUSY, message)
            return
        self._overflow += 1
        try:
            line = await self._read_refused_request(stream)
            if line is not None and _reserved(line):
                self._log.info("control reserved command served past the limit", peer_pid=pid)
                conn.busy = True  # so aclose lets the reply to ``shutdown`` out
                try:
                    await stream.send_all(await self._answer(line, pid))
                finally:
                    conn.busy = False
                    self._request_done.unpark_all()
                return
            self._log.warning("control connection refused: busy", peer_pid=pid)
            await self._send_error(stream, _request_id_of(line), Fault.BUSY, message)
        finally:
            self._overflow -= 1

    async def _read_refused_request(self, stream: trio.SocketStream) -> bytes | None:
        """Read the request line of a connection past the limit; None if none came in time.

        Closing a socket whose receive queue holds unread bytes (or before the client's
        request arrived, so its send hits a closed socket) resets the connection, and the
        queued refusal is lost to the client as ``ECONNRESET``/``EPIPE``. Reading the
        request first makes the refusal a reply. Bounded: ``busy_read_timeout`` seconds and
        ``max_request_bytes``; a client that sends nothing in time still gets the reply."""
        framer = LineFramer(self._max_request_bytes)
        with trio.move_on_after(self._busy_read_timeout):
            while True:
                data = await stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    return None
                try:
                    lines = framer.feed(data)
                except RequestTooLargeError:
                    return None
                if lines:
                    return lines[0]
        return None

    async def _send_error(
        self, stream: trio.SocketStream, request_id: RequestId, code: Fault, message: str
    ) -> None:
        await stream.send_all(self._encode_reply(error_reply(request_id, code.value, message)))

    async def _answer(self, line: bytes, peer_pid: int) -> bytes:
        """The encoded reply to one request line; never raises (except cancellation)."""
        try:
            request = decode_request(line)
        except BadRequestError as exc:
            self._log.info("control bad request", error=exc.message, peer_pid=peer_pid)
            return self._encode_reply(error_reply_for(exc.request_id, exc))
        log = self._log.bind(cmd=request.cmd, request_id=request.id, peer_pid=peer_pid)
        handler = self._handlers.get(request.cmd)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            log.info("control unknown command")
            return self._encode_reply(error_reply(
                request.id, Fault.UNKNOWN_COMMAND.value,
                f"unknown command {request.cmd[:100]!r} (known: {known})"))
        spec = self._specs.get(request.cmd)
        try:
            if spec is not None:
                validate_args(spec, request.args)
            result = await handler(request.args)
            if not isinstance(result, dict):
                raise TypeError(f"handler returned {type(result).__name__}, not a dict")
            if spec is not None and (missing := missing_result_fields(spec, result)):
                log.error("control result lacks documented fields", missing=missing)
            # encoded here: a result JSON cannot carry is a handler bug, logged as one below
            reply = encode_message(ok_reply(request.id, result))
        except Exception as exc:  # the server outlives any handler bug
            aura = _aura_error_in(exc)
            if aura is not None:
                log.info("control request failed", code=aura.code, error=aura.message)
                return self._encode_reply(error_reply_for(request.id, aura))
            log.error("control handler crashed", exc_info=exc)
            return self._encode_reply(error_reply(
                request.id, Fault.INTERNAL.value,
                f"internal error while handling {request.cmd!r} ({type(exc).__name__}); "
                "the traceback is in the node log"))
        return reply

    def _encode_reply(self, reply: dict[str, Any]) -> bytes:
        """``reply`` as a line; a reply JSON cannot carry becomes an ``internal`` error reply.

        ``decode_request`` already refuses requests whose echoed parts could not be encoded
        and ``_answer`` reports a result JSON cannot carry as a handler crash, so reaching the
        fallback means an error message held such a value (a lone surrogate): a node bug,
        logged; the client still gets a reply, with its id when that is encodable."""
        try:
            return encode_message(reply)
        except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError included
            self._log.error("control reply cannot be encoded", error=repr(exc)[:500])
            why = type(exc).__name__
        request_id = reply.get("id")
        if lone_surrogate_in(request_id) is not None:
            request_id = None
        return encode_message(error_reply(
            request_id, Fault.INTERNAL.value,
            f"the reply could not be encoded as JSON ({why}); "
            "the details are in the node log"))


def _aura_error_in(exc: BaseException) -> AuraError | None:
    """``exc`` itself when it is an AuraError, or the AuraError inside an exception group
    whose leaves are all AuraErrors (a handler that used a nursery); else None."""
    if isinstance(exc, AuraError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(AuraError)
        if rest is None and matched is not None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, AuraError) else None
    return None


def _request_id_of(line: bytes | None) -> RequestId:
    if line is None:
        return None
    try:
        return decode_request(line).id
    except BadRequestError as exc:
        return exc.request_id


def _reserved(line: bytes) -> bool:
    try:
        return decode_request(line).cmd in RESERVED_COMMANDS
    except BadRequestError:
        return False
