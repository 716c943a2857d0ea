"""The TLS part of the configuration model: Envoy's DownstreamTlsContext and
UpstreamTlsContext (envoy.extensions.transport_sockets.tls.v3) and their secrets, as plain
frozen dataclasses checked when made (a mistake raises ConfigError naming the field).

The Envoy loader (fastproxy.config.tls) and the Python API both build these. A certificate
or validation context is given inline or named by an :class:`SdsSecretConfig`: a secret of
the bootstrap (``static_resources.secrets``, ``Proxy(secrets=...)``), of a file
(``sds_config`` with a path) or of a management server (``sds_config`` with ``ads`` or an
``api``: fastproxy.xds subscribes the Secret by name). Files named by a :class:`DataSource` are
read when the context is compiled into the core (fastproxy.tls_spec), as Envoy reads them
when it builds its context, so a rotated file is read again when its secret is updated.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError
from .http.model import StringMatch

#: Envoy's TlsParameters.TlsProtocol names and their TLS wire numbers (TLS_AUTO: Envoy's
#: default for the side, see fastproxy.tls_spec).
TLS_VERSIONS = {"TLS_AUTO": None, "TLSv1_0": 0x0301, "TLSv1_1": 0x0302, "TLSv1_2": 0x0303, "TLSv1_3": 0x0304}
#: The SAN types a match_typed_subject_alt_names entry names (Envoy's SubjectAltNameMatcher).
SAN_TYPES = ("EMAIL", "DNS", "URI", "IP_ADDRESS", "OTHER_NAME")
#: CertificateValidationContext.TrustChainVerification.
TRUST_CHAIN_VERIFICATIONS = ("VERIFY_TRUST_CHAIN", "ACCEPT_UNTRUSTED")
#: A session ticket key is 80 bytes (Envoy's TlsSessionTicketKeys: 16 name, 32 HMAC, 32 AES).
SESSION_TICKET_KEY_LEN = 80


_HEX_HASH = re.compile(r"[0-9a-fA-F]{64}")


def certificate_hash(text: str, path: str) -> bytes:
    """verify_certificate_hash: a SHA-256 fingerprint in hex, bytes optionally separated by
    colons (as ``openssl x509 -fingerprint -sha256`` prints it)."""
    plain = text.replace(":", "") if isinstance(text, str) else ""
    if not _HEX_HASH.fullmatch(plain) or (":" in text and len(text) != 95):
        raise ConfigError(path, f"invalid certificate hash {text!r}: expected the SHA-256 fingerprint "
                                "as 64 hex digits (colons between bytes allowed)")
    return bytes.fromhex(plain)


def spki_hash(text: str, path: str) -> bytes:
    """verify_certificate_spki: the base64 SHA-256 of the certificate's SubjectPublicKeyInfo."""
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(path, f"invalid SPKI hash {text!r}: expected the base64 SHA-256 of the "
                                "SubjectPublicKeyInfo (44 characters)")
    return raw


def _fail(path: str, message: str) -> None:
    raise ConfigError(path, message)


def _optional_str(value, path: str, non_empty: bool = True) -> None:
    if value is not None and (not isinstance(value, str) or (non_empty and not value)):
        _fail(path, f"must be a {'non-empty ' if non_empty else ''}string or None, got {value!r}")


def _tuple_of(value, cls, path: str) -> None:
    if not isinstance(value, tuple):
        _fail(path, f"must be a tuple of {cls.__name__}, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, cls):
            _fail(f"{path}[{i}]", f"expected {cls.__name__}, got {type(item).__name__}")


@dataclass(frozen=True)
class DataSource:
    """Envoy's config.core.v3.DataSource: exactly one of a file name (read when the context
    is compiled), inline bytes, an inline string or an environment variable (read then)."""

    filename: Optional[str] = None
    inline_bytes: Optional[bytes] = None
    inline_string: Optional[str] = None
    environment_variable: Optional[str] = None

    def __post_init__(self) -> None:
        given = [f for f in ("filename", "inline_bytes", "inline_string", "environment_variable")
                 if getattr(self, f) is not None]
        if len(given) != 1:
            _fail("DataSource", "exactly one of filename, inline_bytes, inline_string, "
                                f"environment_variable must be set, got {', '.join(given) or 'none'}")
        _optional_str(self.filename, "DataSource.filename")
        _optional_str(self.environment_variable, "DataSource.environment_variable")
        _optional_str(self.inline_string, "DataSource.inline_string", non_empty=False)
        if self.inline_bytes is not None and not isinstance(self.inline_bytes, bytes):
            _fail("DataSource.inline_bytes", f"must be bytes, got {type(self.inline_bytes).__name__}")

    def read(self, path: str) -> bytes:
        """The data, read now (a file, an environment variable); ``path`` names this
        source in the ConfigError raised when it cannot be read (or is empty, which Envoy
        refuses for certificates and keys too)."""
        if self.inline_bytes is not None:
            data = self.inline_bytes
        elif self.inline_string is not None:
            data = self.inline_string.encode()
        elif self.filename is not None:
            try:
                with open(self.filename, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ConfigError(path + ".filename", f"cannot read {self.filename!r}: "
                                                      f"{e.strerror or e}") from None
        else:
            value = os.environ.get(self.environment_variable)     # type: ignore[arg-type]
            if value is None:
                raise ConfigError(path + ".environment_variable",
                                  f"environment variable {self.environment_variable!r} is not set")
            data = value.encode()
        if not data:
            raise ConfigError(path, "is empty")
        return data

    def redacted(self) -> "DataSource":
        """What the config dump shows of a private key (Envoy: inline data "[redacted]")."""
        if self.inline_bytes is not None or self.inline_string is not None:
            return DataSource(inline_string="[redacted]")
        return self


@dataclass(frozen=True)
class TlsCertificate:
    """A certificate chain and its private key (PEM), with the key's password if any.
    ``watched_directory``: when this certificate comes by SDS, a move into that directory
    (a Kubernetes secret volume's ``..data`` swap) reads its files again; without it, a
    file moved onto one of the paths does."""

    certificate_chain: DataSource
    private_key: DataSource
    password: Optional[DataSource] = None
    watched_directory: Optional[str] = None

    def __post_init__(self) -> None:
        for f in ("certificate_chain", "private_key"):
            if not isinstance(getattr(self, f), DataSource):
                _fail(f"TlsCertificate.{f}", f"expected DataSource, got {type(getattr(self, f)).__name__}")
        if self.password is not None and not isinstance(self.password, DataSource):
            _fail("TlsCertificate.password", f"expected DataSource or None, got {type(self.password).__name__}")
        _optional_str(self.watched_directory, "TlsCertificate.watched_directory")

    def files(self) -> list:
        """The file names its data sources read."""
        return [d.filename for d in (self.certificate_chain, self.private_key, self.password)
                if d is not None and d.filename is not None]


def check_cipher_suite(entry: str, path: str) -> None:
    """One cipher_suites entry (a name, an OpenSSL alias such as HIGH, or Envoy's
    ``[A|B]`` group) must name ciphers TLS 1.2 has: Envoy refuses a configuration with an
    unknown one ("The following ciphers were rejected when tried individually"), where
    OpenSSL's SSL_CTX_set_cipher_list would drop it silently if another name is known.
    Each name is tried alone, as ``openssl ciphers <name>`` does (TLS 1.3 suites are not
    in this list, in Envoy either); a rule (``!x``, ``-x``, ``+x``, ``@x``) is taken."""
    import ssl
    names = []
    for part in entry.split(":"):       # (Envoy joins the entries with ':': one may hold several)
        names += part[1:-1].split("|") if part.startswith("[") and part.endswith("]") else [part]
    for name in names:
        if not name or "," in name or " " in name:
            _fail(path, f"not a cipher suite name: {entry!r} (one name, or [A|B], per entry)")
        if name[0] in "!-+@":
            continue
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(name)
        except ssl.SSLError:
            _fail(path, f"unknown cipher suite {name!r} (OpenSSL names, TLS 1.2 and below; Envoy refuses "
                        "it too)")


@dataclass(frozen=True)
class TlsParams:
    """Envoy's TlsParameters: protocol versions (names of TLS_VERSIONS; TLS_AUTO: Envoy's
    default for the side), TLS <= 1.2 cipher suites in OpenSSL names (Envoy's
    ``[A|B]`` equal-preference groups allowed), ECDH curves, signature algorithms."""

    minimum_protocol_version: str = "TLS_AUTO"
    maximum_protocol_version: str = "TLS_AUTO"
    cipher_suites: tuple = ()
    ecdh_curves: tuple = ()
    signature_algorithms: tuple = ()

    def __post_init__(self) -> None:
        for f in ("minimum_protocol_version", "maximum_protocol_version"):
            if getattr(self, f) not in TLS_VERSIONS:
                _fail(f"TlsParams.{f}", f"must be one of {', '.join(TLS_VERSIONS)}, got {getattr(self, f)!r}")
        for f in ("cipher_suites", "ecdh_curves", "signature_algorithms"):
            _tuple_of(getattr(self, f), str, f"TlsParams.{f}")
        for i, suite in enumerate(self.cipher_suites):
            check_cipher_suite(suite, f"TlsParams.cipher_suites[{i}]")
        low, high = (TLS_VERSIONS[self.minimum_protocol_version], TLS_VERSIONS[self.maximum_protocol_version])
        if low is not None and high is not None and low > high:
            _fail("TlsParams.minimum_protocol_version", f"{self.minimum_protocol_version} is above the "
                                                        f"maximum {self.maximum_protocol_version}")


@dataclass(frozen=True)
class SanMatcher:
    """One match_typed_subject_alt_names entry: a SAN of ``san_type`` (SAN_TYPES but
    OTHER_NAME) must match ``matcher``."""

    san_type: str
    matcher: StringMatch

    def __post_init__(self) -> None:
        if self.san_type not in SAN_TYPES[:-1]:
            _fail("SanMatcher.san_type", f"must be one of {', '.join(SAN_TYPES[:-1])}, got {self.san_type!r}")
        if not isinstance(self.matcher, StringMatch):
            _fail("SanMatcher.matcher", f"expected StringMatch, got {type(self.matcher).__name__}")
        self.matcher.validate("SanMatcher.matcher")


@dataclass(frozen=True)
class CertificateValidationContext:
    """How a peer's certificate is verified: against ``trusted_ca`` (none: not verified),
    its SANs, its SHA-256 fingerprint (hex, colons allowed) or SPKI hash (base64), a CRL."""

    trusted_ca: Optional[DataSource] = None
    match_typed_subject_alt_names: tuple = ()
    verify_certificate_hash: tuple = ()
    verify_certificate_spki: tuple = ()
    crl: Optional[DataSource] = None
    trust_chain_verification: str = "VERIFY_TRUST_CHAIN"
    allow_expired_certificate: bool = False
    watched_directory: Optional[str] = None     # as TlsCertificate's

    def files(self) -> list:
        """The file names its data sources read."""
        return [d.filename for d in (self.trusted_ca, self.crl) if d is not None and d.filename is not None]

    def __post_init__(self) -> None:
        _optional_str(self.watched_directory, "CertificateValidationContext.watched_directory")
        for f in ("trusted_ca", "crl"):
            v = getattr(self, f)
            if v is not None and not isinstance(v, DataSource):
                _fail(f"CertificateValidationContext.{f}", f"expected DataSource or None, got {type(v).__name__}")
        _tuple_of(self.match_typed_subject_alt_names, SanMatcher,
                  "CertificateValidationContext.match_typed_subject_alt_names")
        _tuple_of(self.verify_certificate_hash, str, "CertificateValidationContext.verify_certificate_hash")
        _tuple_of(self.verify_certificate_spki, str, "CertificateValidationContext.verify_certificate_spki")
        for i, h in enumerate(self.verify_certificate_hash):
            certificate_hash(h, f"CertificateValidationContext.verify_certificate_hash[{i}]")
        for i, h in enumerate(self.verify_certificate_spki):
            spki_hash(h, f"CertificateValidationContext.verify_certificate_spki[{i}]")
        if self.trust_chain_verification not in TRUST_CHAIN_VERIFICATIONS:
            _fail("CertificateValidationContext.trust_chain_verification",
                  f"must be one of {', '.join(TRUST_CHAIN_VERIFICATIONS)}, got {self.trust_chain_verification!r}")
        if not isinstance(self.allow_expired_certificate, bool):
            _fail("CertificateValidationContext.allow_expired_certificate", "must be a bool")
        if self.crl is not None and self.trusted_ca is None:
            # Envoy: "Failed to load CRL from <inline>without trusted_ca"
            _fail("CertificateValidationContext.crl", "a CRL needs trusted_ca")


def check_san_needs_ca(v: CertificateValidationContext, path: str) -> None:
    """Envoy refuses SAN matchers without a trusted CA (a SAN of a certificate nobody
    vouches for proves nothing); certificate and SPKI hashes alone it takes (pinning)."""
    if v.match_typed_subject_alt_names and v.trusted_ca is None:
        raise ConfigError(f"{path}.match_typed_subject_alt_names",
                          "SAN-based verification of peer certificates without trusted CA is insecure "
                          "and not allowed (Envoy refuses it too)")


@dataclass(frozen=True)
class SdsSecretConfig:
    """A secret by name: from the static secrets (``sds_config`` None) or from where
    ``sds_config`` says: a file holding a DiscoveryResponse of Secrets (``path``), or a
    management server (``ads``: the bootstrap's ADS stream; ``api``: a stream of the
    Secret type's own), which the proxy subscribes to by this name."""

    name: str
    sds_config: Optional[ConfigSource] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            _fail("SdsSecretConfig.name", f"must be a non-empty string, got {self.name!r}")
        # (fastproxy.model.ConfigSource; by its type's name: the model imports this module)
        if self.sds_config is not None and type(self.sds_config).__name__ != "ConfigSource":
            _fail("SdsSecretConfig.sds_config", f"expected ConfigSource, got {type(self.sds_config).__name__}")


def over_xds(sds: SdsSecretConfig) -> bool:
    """Whether ``sds`` names a secret of a management server (ADS or a stream of its own)."""
    return sds.sds_config is not None and (sds.sds_config.ads or sds.sds_config.api is not None)


@dataclass(frozen=True)
class Secret:
    """Envoy's tls.v3.Secret: a name and exactly one of a certificate, a validation
    context or session ticket keys (a tuple of DataSource, 80 bytes each)."""

    name: str
    tls_certificate: Optional[TlsCertificate] = None
    validation_context: Optional[CertificateValidationContext] = None
    session_ticket_keys: Optional[tuple] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            _fail("Secret.name", f"must be a non-empty string, got {self.name!r}")
        given = [f for f in ("tls_certificate", "validation_context", "session_ticket_keys")
                 if getattr(self, f) is not None]
        if len(given) != 1:
            _fail(f"Secret({self.name!r})", "exactly one of tls_certificate, validation_context, "
                                            f"session_ticket_keys must be set, got {', '.join(given) or 'none'}")
        if self.tls_certificate is not None and not isinstance(self.tls_certificate, TlsCertificate):
            _fail("Secret.tls_certificate", f"expected TlsCertificate, got {type(self.tls_certificate).__name__}")
        if self.validation_context is not None and \
                not isinstance(self.validation_context, CertificateValidationContext):
            _fail("Secret.validation_context",
                  f"expected CertificateValidationContext, got {type(self.validation_context).__name__}")
        if self.session_ticket_keys is not None:
            _tuple_of(self.session_ticket_keys, DataSource, "Secret.session_ticket_keys")
            if not self.session_ticket_keys:
                _fail("Secret.session_ticket_keys", "at least one key is needed")

    def watched_paths(self) -> list:
        """[(directory, entry)] whose change means this secret's data must be read again, as
        Envoy watches an SDS-delivered secret's files: the parent directory of each file
        it names, for a move onto that file's name (entry), or, with the certificate's or
        validation context's ``watched_directory``, for a move of anything into that
        directory (entry None)."""
        part = self.tls_certificate or self.validation_context
        if part is None:
            return [os.path.split(os.path.abspath(k.filename)) for k in self.session_ticket_keys or ()
                    if k.filename is not None]
        if part.watched_directory is not None:
            return [(os.path.abspath(part.watched_directory), None)]
        return [os.path.split(os.path.abspath(f)) for f in part.files()]


def _sds_tuple(value, path: str) -> None:
    _tuple_of(value, SdsSecretConfig, path)


@dataclass(frozen=True)
class CommonTlsContext:
    """What both sides have (Envoy's CommonTlsContext): certificates (inline or by SDS),
    parameters, ALPN protocols (preference order), and the peer's validation: inline
    ``validation_context``, by SDS (``validation_context_sds_secret_config``), or both combined (Envoy's
    combined_validation_context: the inline one is the default, fields the SDS secret sets
    win, repeated ones (SAN matchers, hashes) are both's)."""

    tls_certificates: tuple = ()
    tls_certificate_sds_secret_configs: tuple = ()
    tls_params: TlsParams = TlsParams()
    alpn_protocols: tuple = ()
    validation_context: Optional[CertificateValidationContext] = None
    validation_context_sds_secret_config: Optional[SdsSecretConfig] = None

    def __post_init__(self) -> None:
        _tuple_of(self.tls_certificates, TlsCertificate, "CommonTlsContext.tls_certificates")
        _sds_tuple(self.tls_certificate_sds_secret_configs, "CommonTlsContext.tls_certificate_sds_secret_configs")
        if self.tls_certificates and self.tls_certificate_sds_secret_configs:
            # Envoy: "Multiple TLS certificates are not supported ... with SDS" (one or the other)
            _fail("CommonTlsContext.tls_certificate_sds_secret_configs",
                  "give certificates inline (tls_certificates) or by SDS, not both")
        if not isinstance(self.tls_params, TlsParams):
            _fail("CommonTlsContext.tls_params", f"expected TlsParams, got {type(self.tls_params).__name__}")
        _tuple_of(self.alpn_protocols, str, "CommonTlsContext.alpn_protocols")
        for i, p in enumerate(self.alpn_protocols):
            if not p or len(p.encode()) > 255:
                _fail(f"CommonTlsContext.alpn_protocols[{i}]", "an ALPN protocol is 1..255 bytes")
        if self.validation_context is not None and \
                not isinstance(self.validation_context, CertificateValidationContext):
            _fail("CommonTlsContext.validation_context",
                  f"expected CertificateValidationContext, got {type(self.validation_context).__name__}")
        vsds = self.validation_context_sds_secret_config
        if vsds is not None and not isinstance(vsds, SdsSecretConfig):
            _fail("CommonTlsContext.validation_context_sds_secret_config",
                  f"expected SdsSecretConfig, got {type(self.validation_context_sds_secret_config).__name__}")
        if vsds is None and self.validation_context is not None:
            # (combined with an SDS secret, the secret may bring the CA: checked once merged)
            check_san_needs_ca(self.validation_context, "CommonTlsContext.validation_context")

    def secret_names(self) -> list:
        """The SdsSecretConfigs this context names, in order."""
        out = list(self.tls_certificate_sds_secret_configs)
        if self.validation_context_sds_secret_config is not None:
            out.append(self.validation_context_sds_secret_config)
        return out


def sds_refs(ctx, path: str) -> list:
    """[(SdsSecretConfig, path of the field naming it)] of a TLS context (or None) at
    ``path``, in Envoy's field names."""
    if ctx is None:
        return []
    common = ctx.common_tls_context
    out = [(c, f"{path}.common_tls_context.tls_certificate_sds_secret_configs[{i}]")
           for i, c in enumerate(common.tls_certificate_sds_secret_configs)]
    if common.validation_context_sds_secret_config is not None:
        out.append((common.validation_context_sds_secret_config,
                    f"{path}.common_tls_context.validation_context_sds_secret_config"))
    keys = getattr(ctx, "session_ticket_keys_sds_secret_config", None)
    if keys is not None:
        out.append((keys, f"{path}.session_ticket_keys_sds_secret_config"))
    return out


def listener_contexts(listener, path: str) -> list:
    """[(DownstreamTlsContext, path)] of a listener: its own ``tls`` and its filter
    chains' (model.FilterChain.tls, when the listener has filter_chains)."""
    out = []
    if getattr(listener, "tls", None) is not None:
        out.append((listener.tls, path + ".tls"))
    for i, chain in enumerate(getattr(listener, "filter_chains", ()) or ()):
        if getattr(chain, "tls", None) is not None:
            out.append((chain.tls, f"{path}.filter_chains[{i}].tls"))
    default = getattr(listener, "default_filter_chain", None)
    if default is not None and getattr(default, "tls", None) is not None:
        out.append((default.tls, path + ".default_filter_chain.tls"))
    return out


def check_static_secrets(secrets, listeners, clusters, prefix: str = "") -> None:
    """The secrets are Secrets with unique names, and every secret a context names without
    an sds_config is one of them (Envoy: a static secret that does not exist is an error
    when the configuration loads)."""
    if not isinstance(secrets, (list, tuple)):
        raise TypeError(f"secrets must be a list of Secret, got {type(secrets).__name__}")
    names = set()
    for i, s in enumerate(secrets):
        if not isinstance(s, Secret):
            raise TypeError(f"secrets[{i}] must be a fastproxy.model_tls.Secret, got {type(s).__name__}")
        if s.name in names:
            raise ConfigError(f"{prefix}secrets[{i}].name", f"duplicate secret name {s.name!r}")
        names.add(s.name)
    contexts = [(c.tls, f"{prefix}clusters[{i}].tls") for i, c in enumerate(clusters) if c.tls is not None]
    for i, l in enumerate(listeners):
        contexts += listener_contexts(l, f"{prefix}listeners[{i}]")
    for ctx, path in contexts:
        for sds, spath in sds_refs(ctx, path):
            if sds.sds_config is None and sds.name not in names:
                raise ConfigError(spath + ".name", f"unknown static secret {sds.name!r} (not in secrets)")


def _bool_field(obj, name: str, cls: str) -> None:
    if not isinstance(getattr(obj, name), bool):
        _fail(f"{cls}.{name}", f"must be a bool, got {getattr(obj, name)!r}")


@dataclass(frozen=True)
class DownstreamTlsContext:
    """A listener's (a filter chain's) TLS: Envoy's DownstreamTlsContext. At least one
    certificate (inline or by SDS). Session resumption: tickets (keys given, inline or by
    SDS, else random per context) unless disable_stateless_session_resumption; the
    server-side session cache unless disable_stateful_session_resumption."""

    common_tls_context: CommonTlsContext = CommonTlsContext()
    require_client_certificate: bool = False
    session_ticket_keys: tuple = ()
    session_ticket_keys_sds_secret_config: Optional[SdsSecretConfig] = None
    disable_stateless_session_resumption: bool = False
    disable_stateful_session_resumption: bool = False
    session_timeout: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.common_tls_context, CommonTlsContext):
            _fail("DownstreamTlsContext.common_tls_context",
                  f"expected CommonTlsContext, got {type(self.common_tls_context).__name__}")
        c = self.common_tls_context
        if not c.tls_certificates and not c.tls_certificate_sds_secret_configs:
            # Envoy: "No TLS certificates found for server context"
            _fail("DownstreamTlsContext.common_tls_context.tls_certificates",
                  "a server context needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)")
        for f in ("require_client_certificate", "disable_stateless_session_resumption",
                  "disable_stateful_session_resumption"):
            _bool_field(self, f, "DownstreamTlsContext")
        _tuple_of(self.session_ticket_keys, DataSource, "DownstreamTlsContext.session_ticket_keys")
        ksds = self.session_ticket_keys_sds_secret_config
        if ksds is not None and not isinstance(ksds, SdsSecretConfig):
            _fail("DownstreamTlsContext.session_ticket_keys_sds_secret_config", "expected SdsSecretConfig or None")
        given = [f for f in ("session_ticket_keys", "session_ticket_keys_sds_secret_config",
                             "disable_stateless_session_resumption")
                 if getattr(self, f)]
        if len(given) > 1:
            # Envoy's session_ticket_keys_type oneof.
            _fail(f"DownstreamTlsContext.{given[1]}", f"only one of {', '.join(given)} may be set")
        if self.require_client_certificate and c.validation_context is None and \
                c.validation_context_sds_secret_config is None:
            # Envoy refuses it: a client certificate that cannot be verified.
            _fail("DownstreamTlsContext.require_client_certificate",
                  "requiring a client certificate needs a validation context with trusted_ca")
        if self.session_timeout is not None and (isinstance(self.session_timeout, bool) or
                                                 not isinstance(self.session_timeout, (int, float)) or
                                                 not 0 <= self.session_timeout < 1 << 32):
            _fail("DownstreamTlsContext.session_timeout",
                  f"must be seconds 0..4294967295, got {self.session_timeout!r}")

    def secret_names(self) -> list:
        """The SdsSecretConfigs this context names."""
        out = self.common_tls_context.secret_names()
        if self.session_ticket_keys_sds_secret_config is not None:
            out.append(self.session_ticket_keys_sds_secret_config)
        return out


@dataclass(frozen=True)
class UpstreamTlsContext:
    """A cluster's TLS: Envoy's UpstreamTlsContext, and the cluster's HttpProtocolOptions
    auto_sni / auto_san_validation (the SNI and the expected SAN from the request's Host;
    the loader puts them here, the cluster's only TLS). A client certificate (0 or 1) is
    for mutual TLS. ``max_session_keys``: sessions kept per upstream for resumption (0:
    none). Renegotiation is refused (Envoy's allow_renegotiation: only false)."""

    common_tls_context: CommonTlsContext = CommonTlsContext()
    sni: str = ""
    auto_sni: bool = False
    auto_san_validation: bool = False
    max_session_keys: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.common_tls_context, CommonTlsContext):
            _fail("UpstreamTlsContext.common_tls_context",
                  f"expected CommonTlsContext, got {type(self.common_tls_context).__name__}")
        if len(self.common_tls_context.tls_certificates) + \
                len(self.common_tls_context.tls_certificate_sds_secret_configs) > 1:
            # Envoy: "Multiple TLS certificates are not supported for client contexts"
            _fail("UpstreamTlsContext.common_tls_context.tls_certificates",
                  "a client context takes at most one certificate")
        if not isinstance(self.sni, str) or len(self.sni) > 255:
            _fail("UpstreamTlsContext.sni", f"must be a string of at most 255 characters, got {self.sni!r}")
        for f in ("auto_sni", "auto_san_validation"):
            _bool_field(self, f, "UpstreamTlsContext")
        if isinstance(self.max_session_keys, bool) or not isinstance(self.max_session_keys, int) or \
                not 0 <= self.max_session_keys < 1 << 32:
            _fail("UpstreamTlsContext.max_session_keys",
                  f"must be an integer 0..4294967295, got {self.max_session_keys!r}")

    def secret_names(self) -> list:
        """The SdsSecretConfigs this context names."""
        return self.common_tls_context.secret_names()


__all__ = ["DataSource", "TlsCertificate", "TlsParams", "SanMatcher", "CertificateValidationContext",
           "SdsSecretConfig", "over_xds", "Secret", "CommonTlsContext", "DownstreamTlsContext", "UpstreamTlsContext",
           "TLS_VERSIONS", "SAN_TYPES", "TRUST_CHAIN_VERIFICATIONS"]
