"""One encoding of a driver's ``*.rejected`` evidence, shared by every protocol and the runtime."""

from __future__ import annotations

import msgspec

from aura_node.protocols import engine as eng


def test_rejection_record_round_trips_and_keeps_its_map_shape() -> None:
    rec = eng.rejection("dkd.rejected", peer="d2", code="bad_proof", reason="DLEQ fails")
    assert rec.kind == "dkd.rejected"
    # a plain msgpack map: tools reading journals need no Struct to read it
    assert msgspec.msgpack.decode(rec.body) == {
        "peer": "d2", "code": "bad_proof", "reason": "DLEQ fails"}
    assert eng.decode_rejection(rec.body) == eng.RejectionBody(
        peer="d2", code="bad_proof", reason="DLEQ fails")


def test_a_body_that_is_not_a_rejection_decodes_to_none() -> None:
    assert eng.decode_rejection(b"\xc1") is None
    assert eng.decode_rejection(msgspec.msgpack.encode({"peer": "d2"})) is None
