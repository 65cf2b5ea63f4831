"""Plugin modules for ``aura-node run --plugin`` in end-to-end tests (imported by the node).

* ``tests.integration.nodeproc_plugins:extra`` is not a thing: a plugin is a module, so each
  behaviour is a small function run at import of a submodule-like name below. To keep one file,
  the node imports ``tests.integration.nodeproc_plugins`` and the environment variable
  ``AURA_TEST_PLUGIN`` selects what it installs:

  ``extra-choreography``  registers an additional choreography ``echo`` (changes the registry
                          hash; peers without it still link: the hello carries versions);
  ``faulty-responder``    replaces the ping responder driver with one that raises when the
                          session was opened by the device named ``c`` (a driver bug confined
                          to some sessions).
"""

from __future__ import annotations

import os
from dataclasses import replace

import msgspec

from aura_node.protocols import engine as eng


class Echo(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class EchoAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


def _install_extra_choreography() -> None:
    from aura_node.choreo import ChoreographyBuilder, choreography
    from aura_node.protocols.registry import register_choreography

    @choreography("echo", abort=EchoAbort)
    def ECHO(c: ChoreographyBuilder) -> None:
        a = c.role("caller")
        b = c.role("echoer")
        c.phase(a, "Calling")
        c.phase(b, "Listening")
        c.send(a, b, Echo)
        c.phase(a, "Done")
        c.phase(b, "Done")

    register_choreography(ECHO)


def _install_faulty_responder() -> None:
    from aura_node.protocols.ping.roles import SPEC

    class FaultyResponder(SPEC.driver_class("responder")):  # type: ignore[misc]
        def start(self, inp: eng.Start) -> list[eng.Effect]:
            if inp.opened_by == "c":
                raise RuntimeError("injected driver bug for sessions opened by c")
            return super().start(inp)

    spec = eng.PROTOCOLS["ping"]
    eng.PROTOCOLS["ping"] = replace(spec, drivers={**spec.drivers,
                                                   "responder": FaultyResponder})


_which = os.environ.get("AURA_TEST_PLUGIN", "")
if _which == "extra-choreography":
    _install_extra_choreography()
elif _which == "faulty-responder":
    _install_faulty_responder()
else:
    raise RuntimeError(f"AURA_TEST_PLUGIN must name a test plugin, got {_which!r}")
