"""check_conformance takes anything shaped like a local type, and nothing else."""

from __future__ import annotations

from aura_node.session.conformance import check_conformance
from aura_node.session.example import ToyCoordinator

check_conformance(ToyCoordinator, object())  # E: Argument 2 to "check_conformance" has incompatible type "object"; expected "LocalTypeView"
check_conformance(int, object())  # E: Argument 1 to "check_conformance" has incompatible type "type[int]"  # E: Argument 2 to "check_conformance"
