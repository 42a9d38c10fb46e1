"""Certificates generated at test time with `cryptography`: a test CA, server and client
leaves with DNS/IP SANs, and SPIFFE URI SAN leaves; RSA 2048 or ECDSA P-256.

    ca = make_ca("ecdsa")
    server = leaf(ca, "rsa", dns=["localhost"])
    cert_path, key_path = server.write(tmp_path, "server")

Keys are cached per process (RSA generation is the slow part); certificates are cheap.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KINDS = ("rsa", "ecdsa")
SPIFFE_ID = "spiffe://cluster.local/ns/default/sa/baton-test"


@dataclass(frozen=True)
class Pair:
    cert: x509.Certificate
    key: object

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory, name: str) -> tuple[str, str]:
        """(certificate path, key path) under `directory`."""
        directory = Path(directory)
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return str(cert_path), str(key_path)


@functools.lru_cache(maxsize=None)
def private_key(kind: str, slot: int = 0):
    """A key of `kind`; `slot` tells cached keys of the same kind apart."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key kind {kind!r} (expected one of {KINDS})")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Baton tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=2))


@functools.lru_cache(maxsize=None)
def make_ca(kind: str = "ecdsa") -> Pair:
    key = private_key(kind, 1)
    name = _name(f"Baton test CA ({kind})")
    builder = _validity(x509.CertificateBuilder().subject_name(name).issuer_name(name)
                        .public_key(key.public_key()).serial_number(x509.random_serial_number()))
    builder = (builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return Pair(builder.sign(key, hashes.SHA256()), key)


def leaf(ca: Pair, kind: str = "ecdsa", *, dns=("localhost",), ips=("127.0.0.1", "::1"),
         uris=(), common_name: str | None = None, client: bool = False, slot: int = 2) -> Pair:
    """A leaf signed by `ca` with the given SANs (server auth, or client auth if `client`)."""
    key = private_key(kind, slot)
    sans = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = _validity(x509.CertificateBuilder()
                        .subject_name(_name(common_name or (dns[0] if dns else "baton-test")))
                        .issuer_name(ca.cert.subject).public_key(key.public_key())
                        .serial_number(x509.random_serial_number()))
    builder = (builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Pair(builder.sign(ca.key, hashes.SHA256()), key)


def spiffe_leaf(ca: Pair, kind: str = "ecdsa", spiffe_id: str = SPIFFE_ID, client: bool = True) -> Pair:
    """A workload certificate as a mesh issues it: the identity is a URI SAN, no DNS name."""
    return leaf(ca, kind, dns=(), ips=(), uris=(spiffe_id,), common_name="baton-workload",
                client=client, slot=3)
