"""The payment-approval choreography: its messages, and who sends what to whom."""

from typing import Annotated

import msgspec

from aura_node.choreo import ChoreographyBuilder, choreography


class Params(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The operator's start arguments (checked when they arrive, and on the wire)."""

    payee: Annotated[str, msgspec.Meta(min_length=1)]
    amount: Annotated[int, msgspec.Meta(gt=0, le=2**63 - 1)]  # in cents
    memo: str = ""
    k: Annotated[int, msgspec.Meta(ge=1)] = 1  # approvals needed
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0  # seconds to collect them


class Proposal(Params, frozen=True, kw_only=True):
    approvers: tuple[str, ...] = ()


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    signer: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]  # its public key
    approve: bool
    signature: bytes


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    approvals: tuple[Vote, ...]


class PaymentAbort(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@choreography("payment-approval", abort=PaymentAbort)
def PAYMENT_APPROVAL(c: ChoreographyBuilder) -> None:
    initiator = c.role("initiator")
    approvers = c.role_set("approvers", size="n")
    c.phase(initiator, "Proposing")
    c.phase(approvers, "Proposing")
    c.send(initiator, approvers, Proposal)
    c.phase(initiator, "Voting")
    c.phase(approvers, "Voting")
    k = c.threshold("k", of=approvers)  # bound per session from the params
    c.gather(approvers, initiator, Vote, threshold=k, deadline="timeout")
    c.phase(initiator, "Decided")
    c.phase(approvers, "Decided")
    c.send(initiator, approvers, Decision)
    c.phase(initiator, "Approved")
    c.phase(approvers, "Approved")
