"""Device certificates and TLS contexts: what stricter verifiers require, TLS 1.3 only."""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import HandshakeError
from aura_node.transport import tls


def test_certificate_carries_the_device_key_and_strict_extensions() -> None:
    key = DeviceKey.from_seed(b"\x01" * 32)
    ident = tls.tls_identity(key)
    cert = x509.load_der_x509_certificate(ident.certificate_der)
    assert tls.certificate_public_key(ident.certificate_der) == key.public.raw
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == key.device_id and cert.issuer == cert.subject
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_cert_sign
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.days > 365 * 50
    cert.verify_directly_issued_by(cert)  # the self-signature is real
    assert "BEGIN" not in repr(ident)


def test_contexts_are_tls13_only_mutual_and_strict() -> None:
    a, b = tls.tls_identity(DeviceKey.generate()), tls.tls_identity(DeviceKey.generate())
    for ctx in (tls.client_context(a, b.certificate_der), tls.server_context(a, b.certificate_der)):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname
        assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
        assert len(ctx.get_ca_certs(binary_form=True)) == 1


def test_non_ed25519_or_garbage_certificates_are_refused() -> None:
    with pytest.raises(HandshakeError, match="not valid DER"):
        tls.certificate_public_key(b"\x30\x03garbage")
    with pytest.raises(HandshakeError, match="allowed"):
        tls.certificate_public_key(b"\x00" * (tls.MAX_CERT_BYTES + 1))
