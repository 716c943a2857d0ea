"""Certificates made at test time for the TLS tests (no key material is checked in, and none
expires in the repository).

    from tls_certs import CA
    ca = CA()                                            # a root CA (ECDSA P-256)
    server = ca.issue("localhost", dns=["localhost"], ips=["127.0.0.1"])       # ECDSA P-256
    rsa = ca.issue("localhost", dns=["localhost"], key="rsa")                  # RSA-2048
    client = ca.issue("client", uris=["spiffe://test/client"], client=True)
    expired = ca.issue("old", dns=["localhost"], expired=True)
    inter = ca.intermediate("issuing CA"); leaf = inter.issue("a.test", dns=["a.test"])
    files = server.write(tmp_path)      # files.cert (leaf + intermediates), files.key, files.ca
    ca.write(tmp_path).cert             # the CA certificate alone

Private keys are cached per process (RSA-2048 generation takes ~0.1 s each and a session
makes dozens of certificates): ``ca.issue(..., key_slot="x")`` reuses the key of that slot;
leaves of one kind share one key by default, which a test that needs distinct keys (a
certificate that must not match another's key) changes with its own ``key_slot``.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import itertools
import pathlib
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_KINDS = ("ec", "rsa")
_serials = itertools.count(0x1000)
_names = itertools.count(1)


@functools.lru_cache(maxsize=None)
def private_key(kind: str = "ec", slot: str = "leaf"):
    """The process's key for (kind, slot): ECDSA P-256 ("ec") or RSA-2048 ("rsa")."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key kind {kind!r}: one of {KEY_KINDS}")


def key_pem(key) -> bytes:
    """PKCS#8 PEM, unencrypted."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(cn: str, org: Optional[str]) -> x509.Name:
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Files:
    """PEM files written by ``write``: cert (the certificate, then its intermediates: what a
    server or client presents), key, ca (the root that verifies it)."""
    cert: pathlib.Path
    key: pathlib.Path
    ca: pathlib.Path


class Leaf:
    """An issued certificate with its key and the intermediates between it and the root."""

    def __init__(self, cert: x509.Certificate, key, intermediates: Sequence[x509.Certificate],
                 root: "CA"):
        self.cert = cert
        self.key = key
        self.intermediates = list(intermediates)
        self.root = root

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def chain_pem(self) -> bytes:
        """The leaf then its intermediates (a server's certificate_chain)."""
        return self.cert_pem + b"".join(cert_pem(c) for c in self.intermediates)

    @property
    def sha256_hex(self) -> str:
        """Lower-case hex SHA-256 of the DER (Envoy's Hash= and %DOWNSTREAM_PEER_FINGERPRINT_256%)."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def subject(self) -> str:
        """The subject in RFC 2253/4514 form (most significant RDN last), as Envoy prints it."""
        return self.cert.subject.rfc4514_string()

    @property
    def serial_hex(self) -> str:
        """The serial number in lower-case hex, as Envoy's %DOWNSTREAM_PEER_SERIAL% prints it."""
        text = format(self.cert.serial_number, "x")
        return text if len(text) % 2 == 0 else "0" + text

    def write(self, directory, name: Optional[str] = None) -> Files:
        """Write <name>.crt (chain), <name>.key and <name>-ca.crt into directory."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        name = name or f"cert{next(_names)}"
        cert = d / f"{name}.crt"
        key = d / f"{name}.key"
        ca = d / f"{name}-ca.crt"
        cert.write_bytes(self.chain_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        ca.write_bytes(self.root.cert_pem)
        return Files(cert, key, ca)


class CA:
    """A certificate authority (a root, or an intermediate under ``parent``)."""

    def __init__(self, name: str = "fastproxy test CA", key: str = "ec",
                 parent: Optional["CA"] = None, org: str = "fastproxy tests"):
        self.key = private_key(key, f"ca:{name}")
        self.parent = parent
        subject = _name(name, org)
        issuer = parent.cert.subject if parent else subject
        signer = parent.key if parent else self.key
        now = _now()
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(issuer)
                   .public_key(self.key.public_key())
                   .serial_number(next(_serials))
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                                crl_sign=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                                  critical=False))
        if parent:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
                critical=False)
        self.cert = builder.sign(signer, hashes.SHA256())

    @property
    def root(self) -> "CA":
        return self.parent.root if self.parent else self

    @property
    def chain(self) -> List[x509.Certificate]:
        """This CA and the intermediates above it, up to (not including) the root."""
        if self.parent is None:
            return []
        return [self.cert] + self.parent.chain

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def write(self, directory, name: Optional[str] = None) -> Files:
        """Write the CA's own certificate (cert and ca are the same file) and key."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        name = name or f"ca{next(_names)}"
        cert = d / f"{name}.crt"
        key = d / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(key_pem(self.key))
        return Files(cert, key, cert)

    def intermediate(self, name: str = "fastproxy intermediate CA", key: str = "ec") -> "CA":
        return CA(name, key=key, parent=self)

    def issue(self, cn: str = "localhost", *, dns: Iterable[str] = (), ips: Iterable[str] = (),
              uris: Iterable[str] = (), emails: Iterable[str] = (), key: str = "ec",
              key_slot: str = "leaf", client: bool = False, server: bool = True,
              expired: bool = False, not_yet_valid: bool = False, org: Optional[str] = None,
              days: int = 30, serial: Optional[int] = None) -> Leaf:
        """A leaf signed by this CA. dns/ips/uris/emails: its subjectAltNames; client: also
        for TLS client authentication (server: for server authentication, the default);
        expired: valid from 10 days to 1 day ago; not_yet_valid: from tomorrow on."""
        leaf_key = private_key(key, key_slot)
        now = _now()
        if expired:
            start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
        elif not_yet_valid:
            start, end = now + datetime.timedelta(days=1), now + datetime.timedelta(days=1 + days)
        else:
            start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
        sans: List[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.RFC822Name(e) for e in emails]
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn, org)).issuer_name(self.cert.subject)
                   .public_key(leaf_key.public_key())
                   .serial_number(serial if serial is not None else next(_serials))
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Leaf(cert, leaf_key, self.chain, self.root)


@functools.lru_cache(maxsize=None)
def default_ca(key: str = "ec") -> CA:
    """One root per key kind for the whole test session."""
    return CA(f"fastproxy test CA ({key})", key=key)


def server_cert(key: str = "ec", name: str = "localhost") -> Leaf:
    """A server certificate for localhost / 127.0.0.1 / ::1 from default_ca()."""
    return _server_cert(key, name)


@functools.lru_cache(maxsize=None)
def _server_cert(key: str, name: str) -> Leaf:
    return default_ca().issue(name, dns=[name, "localhost"], ips=["127.0.0.1", "::1"],
                              uris=["spiffe://fastproxy.test/server"], key=key)


def client_cert(name: str = "client", uri: str = "spiffe://fastproxy.test/client",
                dns: Sequence[str] = ("client.fastproxy.test",), key: str = "ec") -> Leaf:
    """A client certificate from default_ca() with a URI and DNS SAN (the same one for the
    same arguments, for the whole session)."""
    return _client_cert(name, uri, tuple(dns), key)


@functools.lru_cache(maxsize=None)
def _client_cert(name: str, uri: str, dns: tuple, key: str) -> Leaf:
    return default_ca().issue(name, uris=[uri] if uri else [], dns=list(dns), key=key,
                              key_slot="client", client=True, server=False,
                              org="fastproxy clients")
