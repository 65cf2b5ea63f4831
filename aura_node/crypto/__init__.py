"""Cryptographic keys and constructions. Primitives come from ``cryptography`` and ``pynacl``;
the small constructions (Shamir, Feldman, DLEQ) live here, domain separated and tested."""
