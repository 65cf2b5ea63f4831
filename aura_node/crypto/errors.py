"""Errors of the threshold constructions, all ``CryptoError`` subclasses with their own code.

Callers that only care "did the crypto check fail" catch ``CryptoError``; the protocol layer can
map the finer classes to reasons it journals as evidence (``dleq_invalid``, ``share_invalid``).
"""

from __future__ import annotations

from aura_node.errors import CryptoError


class ScalarEncodingError(CryptoError):
    """Bytes are not the canonical 32-byte little-endian encoding of an integer below L."""

    code = "scalar_invalid"


class PointEncodingError(CryptoError):
    """Bytes are not a canonical encoding of a prime-order-subgroup point (or are small order)."""

    code = "point_invalid"


class ShareError(CryptoError):
    """A share or index set is malformed (index 0, duplicates, out of range) or fails Feldman."""

    code = "share_invalid"


class ThresholdError(CryptoError):
    """Fewer distinct contributions than the threshold."""

    code = "below_threshold"


class ProofError(CryptoError):
    """A DLEQ proof is malformed or does not verify."""

    code = "dleq_invalid"


class SealError(CryptoError):
    """A sealed secret could not be opened (wrong key, wrong binding or tampered bytes)."""

    code = "seal_open_failed"


class ReconstructionError(CryptoError):
    """Reconstructed secret s does not satisfy s·G == S."""

    code = "reconstruction_mismatch"
