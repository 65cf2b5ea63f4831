"""TLS 1.3 identities and contexts for peer links, pinned by raw Ed25519 public key.

Theory of operation
-------------------
Every device has one Ed25519 key (``DeviceKey``). Its TLS identity is a self-signed X.509
certificate over that same key (:func:`device_certificate`): subject and issuer CN = device id,
basicConstraints CA:TRUE pathlen 0 (critical), KeyUsage digitalSignature + keyCertSign
(critical), ExtendedKeyUsage serverAuth + clientAuth, SubjectKeyIdentifier and an
AuthorityKeyIdentifier equal to it. Those are what OpenSSL's ``X509_STRICT`` checks (and what
newer Pythons turn on by default), so we switch ``VERIFY_X509_STRICT`` on ourselves to make sure
the certificate keeps passing.

Peers are pinned in config by *raw public key*, not by certificate, and stdlib ``ssl`` has no
verify callback, so the certificate cannot be checked against a key pin during the handshake.
The link layer therefore learns the peer's certificate from a small cleartext preface first
(:mod:`aura_node.transport.preface`), checks that the certificate's key is pinned, and only then
builds a *per-connection* context whose trust store is exactly that one certificate
(:func:`client_context` / :func:`server_context`, ``CERT_REQUIRED``, no hostname check). The
TLS 1.3 handshake then proves that the peer holds the private key of the pinned certificate
(CertificateVerify), in both directions. After the handshake the link re-checks the key of the
certificate TLS actually verified (:func:`certificate_public_key`) against the pin.

Stdlib ``ssl`` only loads a private key from a file, so :func:`_load_identity` hands it the PEM
through an anonymous ``memfd`` (never on disk) where the platform has one, and through a 0600
file in a fresh 0700 directory, removed at once, elsewhere.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aura_node.crypto.keys import DeviceKey
from aura_node.errors import HandshakeError

#: Certificates are identities, not credentials with a lifetime: the pin is what matters, and a
#: device must keep talking to its peers for years. X.509 still needs a window.
CERT_VALIDITY = datetime.timedelta(days=100 * 365)
#: Backdate notBefore so a peer whose clock runs a little behind accepts a fresh certificate.
CERT_BACKDATE = datetime.timedelta(days=1)
#: An Ed25519 self-signed certificate is ~500 bytes; anything far larger is not ours.
MAX_CERT_BYTES = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsIdentity:
    """This device's certificate (DER) and the PEM pair stdlib ``ssl`` loads."""

    certificate_der: bytes
    certificate_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # never print the key
        return f"TlsIdentity(certificate={len(self.certificate_der)} bytes DER)"


def device_certificate(key: DeviceKey, *, now: datetime.datetime | None = None) -> x509.Certificate:
    """A self-signed certificate over the device key, CN = device id."""
    private = key.to_cryptography()
    public = private.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key.device_id)])
    start = (now or datetime.datetime.now(datetime.UTC)) - CERT_BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    # Ed25519 signs the message itself: no separate hash algorithm.
    return builder.sign(private, algorithm=None)


def tls_identity(key: DeviceKey) -> TlsIdentity:
    cert = device_certificate(key)
    return TlsIdentity(
        certificate_der=cert.public_bytes(serialization.Encoding.DER),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.to_pem(),
    )


def certificate_public_key(der: bytes) -> bytes:
    """The raw Ed25519 public key of a DER certificate; ``HandshakeError`` if it has none."""
    if len(der) > MAX_CERT_BYTES:
        raise HandshakeError(
            f"peer certificate is {len(der)} bytes, more than the {MAX_CERT_BYTES} allowed"
        )
    try:
        cert = x509.load_der_x509_certificate(der)
        public = cert.public_key()
    except ValueError as exc:
        raise HandshakeError(f"peer certificate is not valid DER X.509: {exc}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise HandshakeError(
            f"peer certificate carries a {type(public).__name__}, expected an Ed25519 key"
        )
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _base_context(
    purpose: int, identity: TlsIdentity, peer_certificate_der: bytes
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # Pinned identities, not names: the trust store is the one certificate the preface showed
    # and whose key is pinned in config.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    # No resumption: every link proves possession of the pinned key afresh.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.load_verify_locations(cadata=peer_certificate_der)
    _load_identity(ctx, identity)
    return ctx


def client_context(identity: TlsIdentity, peer_certificate_der: bytes) -> ssl.SSLContext:
    """Context for dialing a peer whose (pinned) certificate the preface showed."""
    return _base_context(ssl.PROTOCOL_TLS_CLIENT, identity, peer_certificate_der)


def server_context(identity: TlsIdentity, peer_certificate_der: bytes) -> ssl.SSLContext:
    """Context for accepting a peer; client certificates are required (mutual TLS)."""
    return _base_context(ssl.PROTOCOL_TLS_SERVER, identity, peer_certificate_der)


def _load_identity(ctx: ssl.SSLContext, identity: TlsIdentity) -> None:
    pem = identity.certificate_pem + identity.key_pem
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("aura-tls-identity", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            path = f"/proc/self/fd/{fd}"
            if os.path.exists(path):
                ctx.load_cert_chain(path)
                return
        finally:
            os.close(fd)
    directory = Path(tempfile.mkdtemp(prefix="aura-tls-"))  # mode 0700
    path_file = directory / "identity.pem"
    try:
        fd = os.open(path_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)
        ctx.load_cert_chain(str(path_file))
    finally:
        path_file.unlink(missing_ok=True)
        directory.rmdir()
