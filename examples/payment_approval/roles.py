"""Payment approval's witness, its two roles, and its registration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar, final

from msgspec.structs import asdict

from aura_node.crypto.keys import DevicePublicKey
from aura_node.crypto.transcript import transcript
from aura_node.errors import WitnessError
from aura_node.protocols.kit import NoParams, Step, protocol
from aura_node.session.typestate import ChoreographicProtocol, Phase, transition
from aura_node.session.witness import SignedStatement, Witness, verify_threshold_evidence

from .choreography import PAYMENT_APPROVAL, Decision, Params, Proposal, Vote

S = TypeVar("S")
DOMAIN = "payment-approval/vote"  # a vote's signature is good for nothing else


def payload(t: Params, approve: bool) -> bytes:
    """What a vote signs (SignedStatement adds the session id and the choreography)."""
    return transcript(DOMAIN, t.payee, t.amount, t.memo, "approve" if approve else "reject")


def sign_vote(step: Step[NoParams], terms: Params, approve: bool) -> Vote:
    """This device's vote on ``terms`` in this session."""
    st = SignedStatement.sign(step.services.device_key, domain=DOMAIN, session_id=step.session,
                              choreography="payment-approval", payload=payload(terms, approve))
    return Vote(signer=step.services.device_key.public.raw, approve=approve, signature=st.signature)


@final
@dataclass(frozen=True, slots=True, init=False)
class ApprovalQuorum(Witness):
    """Verified: ``k`` distinct members approved ``terms`` in one session. No public
    constructor: :meth:`verify` is the only way to get one."""

    terms: Params
    approvals: tuple[Vote, ...]

    @classmethod
    def verify(cls, approvals: tuple[Vote, ...], *, members: list[DevicePublicKey],
               session: str, terms: Params, k: int) -> ApprovalQuorum:
        """Signatures (over an *approval*: a rejection does not verify), membership, session
        binding, duplicates (counted once) and the threshold; ``WitnessError`` says which."""
        verify_threshold_evidence(
            (SignedStatement(signer=DevicePublicKey(v.signer), session_id=session,
                             choreography="payment-approval", payload=payload(terms, True),
                             signature=v.signature) for v in approvals),
            members=members, session_id=session, choreography="payment-approval",
            domain=DOMAIN, threshold=k)
        return cls._create(terms=terms, approvals=approvals)


class PaymentApproval:
    """Choreography marker type."""


@final
class Proposing(Phase): ...
@final
class Voting(Phase): ...
@final
class Decided(Phase): ...
@final
class Approved(Phase): ...
@final
class Failed(Phase): ...


@final
class Initiator(ChoreographicProtocol[PaymentApproval, S], choreography="payment-approval",
                role="initiator", initial=Proposing, abort=Failed):
    votes: tuple[tuple[str, Vote], ...]  # (approver, its vote), in arrival order
    quorum: tuple[Vote, ...]  # the approvals an ApprovalQuorum verified: the evidence

    def __init__(self: Initiator[Proposing], step: Step[Params]) -> None:
        self._begin(votes=(), quorum=())

    @transition(source=Proposing, target=Voting, action="send", message=Proposal, peer="approvers")
    def propose(self: Initiator[Proposing], step: Step[Params]
                ) -> tuple[Initiator[Voting], Proposal]:
        step.arm("deadline", at=step.now + step.params.timeout)
        proposal = Proposal(approvers=step.members("approvers"), **asdict(step.params))
        return self._advance(Initiator[Voting]), proposal

    @transition(source=Voting, target=Decided, action="gather", message=Vote, peer="approvers")
    def collect(self: Initiator[Voting], vote: Vote, step: Step[Params]
                ) -> Initiator[Voting] | Initiator[Decided]:
        p, approvers = step.params, step.members("approvers")
        if step.sender in dict(self.votes):  # the runtime's monitor stops this; be sure anyway
            raise WitnessError(f"a second vote from {step.sender}")
        votes = (*self.votes, (step.sender, vote))
        yes = tuple(v for _, v in votes if v.approve)
        if vote.approve:  # each approval so far signed by its own sender: the witness checks
            quorum = ApprovalQuorum.verify(yes, session=step.session, terms=p, k=len(yes), members=[
                step.services.member(n).public_key for n, v in votes if v.approve])
            if len(yes) == p.k:
                return self._advance(Initiator[Decided], votes=votes, quorum=quorum.approvals)
        if len(votes) - len(yes) > len(approvers) - p.k:
            step.fail("rejected", f"{len(votes) - len(yes)} of {len(approvers)} rejected")
        return self._advance(Initiator[Voting], votes=votes)

    @transition(source=Voting, target=Failed, action="timeout")
    def time_out(self: Initiator[Voting], step: Step[Params]) -> Initiator[Failed]:
        step.fail("timeout", f"fewer than {step.params.k} approvals by the deadline")
        return self._advance(Initiator[Failed])

    @transition(source=Decided, target=Approved, action="send", message=Decision, peer="approvers")
    def announce(self: Initiator[Decided], step: Step[Params]
                 ) -> tuple[Initiator[Approved], Decision]:
        step.complete(decision="approved", approved_by=[n for n, v in self.votes if v.approve])
        return self._advance(Initiator[Approved]), Decision(approvals=self.quorum)


@final
class Approver(ChoreographicProtocol[PaymentApproval, S], choreography="payment-approval",
               role="approvers", initial=Proposing, abort=Failed):
    proposal: Proposal

    def __init__(self: Approver[Proposing], step: Step[NoParams]) -> None:
        self._begin(proposal=Proposal(payee="", amount=0))  # until the real one arrives

    @transition(source=Proposing, target=Voting, action="recv", message=Proposal, peer="initiator")
    def receive(self: Approver[Proposing], proposal: Proposal, step: Step[NoParams]
                ) -> Approver[Voting]:
        # the initiator's deadline, plus a few seconds for its decision to travel
        step.arm("deadline", at=step.now + proposal.timeout + 5.0)
        return self._advance(Approver[Voting], proposal=proposal)

    @transition(source=Voting, target=Decided, action="send", message=Vote,
                peer="initiator", command="approve")
    def approve(self: Approver[Voting], args: dict[str, Any], step: Step[NoParams]
                ) -> tuple[Approver[Decided], Vote]:
        return self._advance(Approver[Decided]), sign_vote(step, self.proposal, True)

    @transition(source=Voting, target=Decided, action="send", message=Vote,
                peer="initiator", command="reject")
    def reject(self: Approver[Voting], args: dict[str, Any], step: Step[NoParams]
               ) -> tuple[Approver[Decided], Vote]:
        return self._advance(Approver[Decided]), sign_vote(step, self.proposal, False)

    @transition(source=Decided, target=Approved, action="recv", message=Decision, peer="initiator")
    def learn(self: Approver[Decided], decision: Decision, step: Step[NoParams]
              ) -> Approver[Approved]:
        p = self.proposal
        ApprovalQuorum.verify(decision.approvals, session=step.session, terms=p, k=p.k,
                              members=[step.services.member(n).public_key for n in p.approvers])
        step.complete(decision="approved", approvals=len(decision.approvals))
        return self._advance(Approver[Approved])


PROTOCOL = protocol(PAYMENT_APPROVAL, Initiator, Approver, params=Params,
                    responder_params=NoParams, control=True)
