"""Payment approval: an example protocol written only with the public authoring kit.

An initiator proposes a payment (payee, amount, memo) to a role set of approvers; each approver's
operator answers ``approve`` or ``reject`` (a vote signed by the approver's device key); with
``k`` approvals before the deadline the initiator broadcasts the decision with the approvals as
evidence, which every approver verifies. Rejections that leave ``k`` out of reach end it as
``rejected``, the deadline as ``timeout``.

Load it into a node with ``aura-node run --plugin examples/payment_approval`` (or the module
name ``examples.payment_approval`` from the repository root); importing it registers it.
``docs/writing-a-protocol.md`` builds it step by step.
"""

from .roles import PROTOCOL as PROTOCOL
