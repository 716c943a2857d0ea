"""Envoy v3 TLS configuration -> fastproxy.model_tls: a listener's or cluster's
``transport_socket`` (``envoy.transport_sockets.tls`` with a DownstreamTlsContext or an
UpstreamTlsContext, or ``envoy.transport_sockets.raw_buffer``: plain TCP), the bootstrap's
``static_resources.secrets`` and the Secret resources of SDS (files, ADS).

What fastproxy implements is read; every other field of these messages is refused with its
path (config/proto.py), never ignored: a TLS setting silently dropped is a security hole.
A field fastproxy has no use for is accepted only at its default value (e.g.
``allow_renegotiation: false``; renegotiation is always refused).
"""
from __future__ import annotations

import base64
import binascii
import os
from typing import Any, Optional

from ..errors import ConfigError
from .. import model_tls as t
from .http_common import _STRING_MATCH_FIELDS, _bool, _oneof, _string_match
from .proto import Message

TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"
_TLS_PACKAGE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
DOWNSTREAM_TLS_TYPE = _TLS_PACKAGE + "DownstreamTlsContext"
UPSTREAM_TLS_TYPE = _TLS_PACKAGE + "UpstreamTlsContext"
SECRET_TYPE = _TLS_PACKAGE + "Secret"
RAW_BUFFER_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"

# Envoy's enums, by name and number.
TLS_PROTOCOLS = {"TLS_AUTO": 0, "TLSv1_0": 1, "TLSv1_1": 2, "TLSv1_2": 3, "TLSv1_3": 4}
SAN_TYPES = {"SAN_TYPE_UNSPECIFIED": 0, "EMAIL": 1, "DNS": 2, "URI": 3, "IP_ADDRESS": 4, "OTHER_NAME": 5}
TRUST_CHAIN = {"VERIFY_TRUST_CHAIN": 0, "ACCEPT_UNTRUSTED": 1}
OCSP_POLICIES = {"LENIENT_STAPLING": 0, "STRICT_STAPLING": 1, "MUST_STAPLE": 2}

# Per message: the fields fastproxy reads, and those Envoy has that it does not implement
# (refused when set to anything but their default).
_DATA_SOURCE = ("filename", "inline_bytes", "inline_string", "environment_variable", "watched_directory")
_COMMON = ("tls_params", "tls_certificates", "tls_certificate_sds_secret_configs", "validation_context",
           "validation_context_sds_secret_config", "combined_validation_context", "alpn_protocols")
_COMMON_REFUSED = ("tls_certificate_provider_instance", "custom_tls_certificate_selector",
                   "tls_certificate_certificate_provider", "tls_certificate_certificate_provider_instance",
                   "validation_context_certificate_provider", "validation_context_certificate_provider_instance",
                   "custom_handshaker", "key_log")
_CERT = ("certificate_chain", "private_key", "password", "watched_directory")
_CERT_REFUSED = ("pkcs12", "private_key_provider", "ocsp_staple",
                 "signed_certificate_timestamp")
_VALIDATION = ("trusted_ca", "verify_certificate_spki", "verify_certificate_hash", "match_typed_subject_alt_names",
               "crl", "allow_expired_certificate", "trust_chain_verification", "watched_directory")
_VALIDATION_REFUSED = ("ca_certificate_provider_instance", "system_root_certs",
                       "match_subject_alt_names", "require_signed_certificate_timestamp", "custom_validator_config",
                       "only_verify_leaf_cert_crl", "max_verify_depth")
_PARAMS = ("tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites", "ecdh_curves",
           "signature_algorithms")
_PARAMS_REFUSED = ("compliance_policies",)
_DOWNSTREAM = ("common_tls_context", "require_client_certificate", "session_ticket_keys",
               "session_ticket_keys_sds_secret_config", "disable_stateless_session_resumption",
               "disable_stateful_session_resumption", "session_timeout")
_DOWNSTREAM_REFUSED = ("require_sni", "ocsp_staple_policy", "full_scan_certs_on_sni_mismatch",
                       "prefer_client_ciphers")
_UPSTREAM = ("common_tls_context", "sni", "auto_sni_san_validation", "max_session_keys")
_UPSTREAM_REFUSED = ("allow_renegotiation", "enforce_rsa_key_usage", "auto_host_sni")


def _refuse(msg: Message, names: tuple, defaults: Optional[dict] = None) -> None:
    """Refuse each of ``names`` that is set (to anything but its default in ``defaults``:
    Envoy's own default, which fastproxy's behaviour is)."""
    defaults = defaults or {}
    for name in names:
        value = msg.raw(name)
        if value is None or (name in defaults and value in defaults[name]):
            continue
        why = _WHY.get(name, "not implemented in fastproxy")
        raise ConfigError(msg.at(name), f"{name} is unsupported in fastproxy ({why}); remove it")


_WHY = {
    "allow_renegotiation": "TLS renegotiation is always refused",
    "auto_host_sni": "the SNI from the upstream host's hostname is not built; the cluster's "
                     "upstream_http_protocol_options.auto_sni takes it from the request's host",
    "match_subject_alt_names": "deprecated in Envoy: use match_typed_subject_alt_names",
    "watched_directory": "a DataSource's own watch is not implemented; set watched_directory on the "
                         "TlsCertificate or CertificateValidationContext delivered by SDS",
    "system_root_certs": "give the CA bundle as trusted_ca",
    "require_sni": "use a filter chain match on server_names",
    "private_key_provider": "private keys are PEM data",
    "pkcs12": "give certificate_chain and private_key in PEM",
}


def data_source(parent: Message, name: str, required: bool = False) -> Optional[t.DataSource]:
    """The envoy.config.core.v3.DataSource field ``name`` of ``parent`` (None: absent)."""
    value = parent.raw(name)
    if value is None:
        if required:
            raise ConfigError(parent.at(name), "required field is missing")
        return None
    return data_source_at(value, parent.at(name))


def data_source_at(item: Any, path: str) -> t.DataSource:
    """An envoy.config.core.v3.DataSource: one of filename, inline_bytes (base64 in JSON and
    YAML, as protobuf's JSON mapping), inline_string, environment_variable."""
    msg = Message(item, path, _DATA_SOURCE)
    _refuse(msg, ("watched_directory",))
    kind = _oneof(msg, _DATA_SOURCE[:4], required=True)
    if kind == "inline_bytes":
        text = msg.string("inline_bytes")
        try:
            return t.DataSource(inline_bytes=base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ConfigError(msg.at("inline_bytes"), "bytes are base64 in Envoy's JSON/YAML; "
                                                      "this is not valid base64") from None
    value = msg.string(kind, non_empty=kind != "inline_string")
    if kind == "filename" and not os.path.isfile(value):
        # Envoy reads the file when the configuration loads ("Invalid path: ...").
        raise ConfigError(msg.at("filename"), f"invalid path: {value!r} is not a readable file")
    return t.DataSource(**{kind: value})


def _strings(msg: Message, name: str) -> tuple:
    out = []
    for item, path in msg.repeated(name):
        if not isinstance(item, str) or not item:
            raise ConfigError(path, f"expected a non-empty string, got {item!r}")
        out.append(item)
    return tuple(out)


def tls_params(parent: Message) -> t.TlsParams:
    msg = parent.message("tls_params", _PARAMS + _PARAMS_REFUSED)
    if msg is None:
        return t.TlsParams()
    _refuse(msg, _PARAMS_REFUSED)
    # (enum() compares upper-cased names: Envoy's spelling is taken back from the number)
    upper = {k.upper(): v for k, v in TLS_PROTOCOLS.items()}
    by_number = {v: k for k, v in TLS_PROTOCOLS.items()}
    low, high = (by_number[upper[msg.enum(f, upper, default="TLS_AUTO")]]
                 for f in ("tls_minimum_protocol_version", "tls_maximum_protocol_version"))
    for f, v in (("tls_minimum_protocol_version", low), ("tls_maximum_protocol_version", high)):
        if v in ("TLSv1_0", "TLSv1_1"):
            raise ConfigError(msg.at(f), f"{v} is unsupported in fastproxy (TLS 1.2 and 1.3 only)")
    suites = _strings(msg, "cipher_suites")
    for i, suite in enumerate(suites):
        t.check_cipher_suite(suite, f"{msg.at('cipher_suites')}[{i}]")
    try:
        return t.TlsParams(low, high, suites, _strings(msg, "ecdh_curves"),
                           _strings(msg, "signature_algorithms"))
    except ConfigError as e:
        raise ConfigError(msg.at("tls_minimum_protocol_version"), e.message) from None


def watched_directory(msg: Message) -> Optional[str]:
    """A TlsCertificate's or CertificateValidationContext's watched_directory (a
    config.core.v3.WatchedDirectory: its path), or None."""
    if msg.raw("watched_directory") is None:
        return None
    wd = msg.message("watched_directory", ("path",))
    directory = wd.string("path", required=True, non_empty=True)
    if not os.path.isdir(directory):
        raise ConfigError(wd.at("path"), f"{directory!r} is not a directory")
    return directory


def tls_certificate(item: Any, path: str) -> t.TlsCertificate:
    msg = Message(item, path, _CERT + _CERT_REFUSED)
    _refuse(msg, _CERT_REFUSED)
    return t.TlsCertificate(data_source(msg, "certificate_chain", required=True),
                            data_source(msg, "private_key", required=True), data_source(msg, "password"),
                            watched_directory=watched_directory(msg))


def validation_context(item: Any, path: str) -> t.CertificateValidationContext:
    msg = Message(item, path, _VALIDATION + _VALIDATION_REFUSED)
    _refuse(msg, _VALIDATION_REFUSED, {"only_verify_leaf_cert_crl": (False,),
                                       "require_signed_certificate_timestamp": (False,)})
    sans = []
    for entry, epath in msg.repeated("match_typed_subject_alt_names"):
        m = Message(entry, epath, ("san_type", "matcher", "oid"))
        san = m.enum("san_type", SAN_TYPES, default="SAN_TYPE_UNSPECIFIED")
        if san == "SAN_TYPE_UNSPECIFIED":
            raise ConfigError(m.at("san_type"), "required: EMAIL, DNS, URI or IP_ADDRESS")
        if san == "OTHER_NAME" or m.raw("oid") is not None:
            raise ConfigError(m.at("san_type" if san == "OTHER_NAME" else "oid"),
                              "OTHER_NAME SANs are unsupported in fastproxy")
        sans.append(t.SanMatcher(san, _string_match(m.message("matcher", _STRING_MATCH_FIELDS, required=True))))
    hashes = _strings(msg, "verify_certificate_hash")
    spkis = _strings(msg, "verify_certificate_spki")
    for i, h in enumerate(hashes):
        t.certificate_hash(h, f"{msg.at('verify_certificate_hash')}[{i}]")
    for i, h in enumerate(spkis):
        t.spki_hash(h, f"{msg.at('verify_certificate_spki')}[{i}]")
    trusted = data_source(msg, "trusted_ca")
    crl = data_source(msg, "crl")
    if crl is not None and trusted is None:
        raise ConfigError(msg.at("crl"), "a CRL needs trusted_ca (Envoy refuses it too)")
    return t.CertificateValidationContext(
        trusted_ca=trusted, match_typed_subject_alt_names=tuple(sans), verify_certificate_hash=hashes,
        verify_certificate_spki=spkis, crl=crl,
        trust_chain_verification=msg.enum("trust_chain_verification", TRUST_CHAIN, default="VERIFY_TRUST_CHAIN"),
        allow_expired_certificate=_bool(msg, "allow_expired_certificate"),
        watched_directory=watched_directory(msg))


# The reader of a ConfigSource (config/envoy.py's config_source, which registers itself:
# that module imports this one).
_config_source: list = [None]


def use_config_source_reader(reader) -> None:
    """Set the function (message, field) -> model.ConfigSource that reads sds_config."""
    _config_source[0] = reader


def sds_secret_config(item: Any, path: str) -> t.SdsSecretConfig:
    """An SdsSecretConfig: a name, and sds_config (a ConfigSource: a file or ADS); without
    sds_config the name is a static secret's. (Where an ads or api_config_source leads is
    checked with the bootstrap's other sources: config/envoy.py.)"""
    msg = Message(item, path, ("name", "sds_config"))
    name = msg.string("name", required=True, non_empty=True)
    source = _config_source[0](msg, "sds_config") if msg.raw("sds_config") is not None else None
    return t.SdsSecretConfig(name, source)


def common_tls_context(parent: Message) -> t.CommonTlsContext:
    msg = parent.message("common_tls_context", _COMMON + _COMMON_REFUSED)
    if msg is None:
        return t.CommonTlsContext()
    _refuse(msg, _COMMON_REFUSED)
    certs = tuple(tls_certificate(item, p) for item, p in msg.repeated("tls_certificates"))
    sds = tuple(sds_secret_config(item, p) for item, p in msg.repeated("tls_certificate_sds_secret_configs"))
    if certs and sds:
        raise ConfigError(msg.at("tls_certificate_sds_secret_configs"),
                          "give certificates in tls_certificates or tls_certificate_sds_secret_configs, not both")
    kind = _oneof(msg, ("validation_context", "validation_context_sds_secret_config", "combined_validation_context"))
    validation = validation_sds = None
    if kind == "validation_context":
        validation = validation_context(msg.raw(kind), msg.at(kind))
        t.check_san_needs_ca(validation, msg.at(kind))
    elif kind == "validation_context_sds_secret_config":
        validation_sds = sds_secret_config(msg.raw(kind), msg.at(kind))
    elif kind == "combined_validation_context":
        combined = msg.message(kind, ("default_validation_context", "validation_context_sds_secret_config",
                                      "validation_context_certificate_provider",
                                      "validation_context_certificate_provider_instance"))
        _refuse(combined, ("validation_context_certificate_provider",
                           "validation_context_certificate_provider_instance"))
        default = combined.raw("default_validation_context")
        if default is None:
            raise ConfigError(combined.at("default_validation_context"), "required field is missing")
        validation = validation_context(default, combined.at("default_validation_context"))
        sds_item = combined.raw("validation_context_sds_secret_config")
        if sds_item is None:
            raise ConfigError(combined.at("validation_context_sds_secret_config"), "required field is missing")
        validation_sds = sds_secret_config(sds_item, combined.at("validation_context_sds_secret_config"))
    alpn = _strings(msg, "alpn_protocols")
    for i, p in enumerate(alpn):
        if len(p.encode()) > 255:
            raise ConfigError(f"{msg.at('alpn_protocols')}[{i}]", "an ALPN protocol is at most 255 bytes")
    return t.CommonTlsContext(tls_certificates=certs, tls_certificate_sds_secret_configs=sds,
                              tls_params=tls_params(msg), alpn_protocols=alpn, validation_context=validation,
                              validation_context_sds_secret_config=validation_sds)


def _ticket_key(item: Any, path: str) -> t.DataSource:
    """A session ticket key: 80 bytes (checked now, as Envoy does when it loads them)."""
    source = data_source_at(item, path)
    if source.environment_variable is None:
        n = len(source.read(path))
        if n != t.SESSION_TICKET_KEY_LEN:
            raise ConfigError(path, f"a session ticket key is {t.SESSION_TICKET_KEY_LEN} bytes, got {n}")
    return source


def _model(path: str, build):
    """Build a model_tls object; its own check's error is put at ``path``."""
    try:
        return build()
    except ConfigError as e:
        field = e.path.split(".", 1)[1] if "." in e.path else ""
        raise ConfigError(f"{path}.{field}" if field else path, e.message) from None


def downstream_tls_context(value: Any, path: str) -> t.DownstreamTlsContext:
    """A DownstreamTlsContext (``value``: the typed_config mapping, its @type included)."""
    msg = Message(value, path, _DOWNSTREAM + _DOWNSTREAM_REFUSED, ignore=("@type",))
    _refuse(msg, _DOWNSTREAM_REFUSED, {"require_sni": (False,), "full_scan_certs_on_sni_mismatch": (False,),
                                       "prefer_client_ciphers": (False,),
                                       "ocsp_staple_policy": ("LENIENT_STAPLING", 0)})
    common = common_tls_context(msg)
    keys: tuple = ()
    tk = msg.message("session_ticket_keys", ("keys",))
    if tk is not None:
        keys = tuple(_ticket_key(item, p) for item, p in tk.repeated("keys"))
        if not keys:
            raise ConfigError(tk.at("keys"), "at least one key is needed")
    tk_sds = None
    if msg.raw("session_ticket_keys_sds_secret_config") is not None:
        tk_sds = sds_secret_config(msg.raw("session_ticket_keys_sds_secret_config"),
                                   msg.at("session_ticket_keys_sds_secret_config"))
    given = [f for f in ("session_ticket_keys", "session_ticket_keys_sds_secret_config",
                         "disable_stateless_session_resumption") if msg.raw(f) not in (None, False)]
    if len(given) > 1:
        raise ConfigError(msg.at(given[1]), f"only one of {', '.join(given)} may be set (Envoy's "
                                            "session_ticket_keys_type)")
    require = _bool(msg, "require_client_certificate")
    if require and common.validation_context is None and common.validation_context_sds_secret_config is None:
        raise ConfigError(msg.at("require_client_certificate"),
                          "requiring a client certificate needs common_tls_context.validation_context "
                          "(with trusted_ca) to verify it")
    if not common.tls_certificates and not common.tls_certificate_sds_secret_configs:
        raise ConfigError(msg.at("common_tls_context.tls_certificates"),
                          "a server context needs a certificate (tls_certificates or "
                          "tls_certificate_sds_secret_configs)")
    timeout = msg.duration("session_timeout")
    if timeout is not None and timeout >= 1 << 32:
        raise ConfigError(msg.at("session_timeout"), "must be less than 4294967296s")
    return _model(path, lambda: t.DownstreamTlsContext(
        common_tls_context=common, require_client_certificate=require, session_ticket_keys=keys,
        session_ticket_keys_sds_secret_config=tk_sds,
        disable_stateless_session_resumption=_bool(msg, "disable_stateless_session_resumption"),
        disable_stateful_session_resumption=_bool(msg, "disable_stateful_session_resumption"),
        session_timeout=timeout))


def upstream_tls_context(value: Any, path: str, auto_sni: bool = False,
                         auto_san_validation: bool = False) -> t.UpstreamTlsContext:
    """An UpstreamTlsContext; ``auto_sni`` / ``auto_san_validation`` from the cluster's
    HttpProtocolOptions.upstream_http_protocol_options. The context's auto_sni_san_validation
    (the peer's DNS SAN checked against the SNI sent) is read as auto_san_validation, whose
    check is against that name; its auto_host_sni (SNI from the upstream host's hostname,
    not the request's host) is refused until built."""
    msg = Message(value, path, _UPSTREAM + _UPSTREAM_REFUSED, ignore=("@type",))
    _refuse(msg, _UPSTREAM_REFUSED, {"allow_renegotiation": (False,), "enforce_rsa_key_usage": (True,),
                                     "auto_host_sni": (False,)})
    common = common_tls_context(msg)
    if len(common.tls_certificates) + len(common.tls_certificate_sds_secret_configs) > 1:
        raise ConfigError(msg.at("common_tls_context.tls_certificates"),
                          "a client context takes at most one certificate (Envoy: multiple TLS "
                          "certificates are not supported for client contexts)")
    if _bool(msg, "auto_sni_san_validation") and common.validation_context is None and \
            common.validation_context_sds_secret_config is None:
        raise ConfigError(msg.at("auto_sni_san_validation"), "auto_sni_san_validation needs a validation "
                                                              "context (Envoy refuses it too)")
    sni = msg.string("sni", default="")
    if len(sni) > 255:
        raise ConfigError(msg.at("sni"), "at most 255 characters")
    return _model(path, lambda: t.UpstreamTlsContext(
        common_tls_context=common, sni=sni,
        auto_sni=auto_sni,
        auto_san_validation=auto_san_validation or _bool(msg, "auto_sni_san_validation"),
        max_session_keys=msg.uint32("max_session_keys", default=1)))


def transport_socket(value: Any, path: str, downstream: bool, **upstream_options) -> Optional[Any]:
    """A listener's filter chain's (``downstream``) or a cluster's ``transport_socket``
    (``value``: the TransportSocket mapping, ``path``: its path): the TLS context model, or
    None for raw_buffer (plain TCP). ``upstream_options``: auto_sni, auto_san_validation."""
    msg = Message(value, path, ("name", "typed_config"))
    name = msg.string("name", required=True, non_empty=True)
    typed = msg.mapping("typed_config")
    if typed is None:
        raise ConfigError(msg.at("typed_config"), f"required field is missing (the {name} settings, "
                                                  "with their @type)")
    type_url = typed.get("@type")
    want = DOWNSTREAM_TLS_TYPE if downstream else UPSTREAM_TLS_TYPE
    if type_url == RAW_BUFFER_TYPE:
        Message(typed, msg.at("typed_config"), (), ignore=("@type",))
        return None
    if type_url in (DOWNSTREAM_TLS_TYPE, UPSTREAM_TLS_TYPE) and type_url != want:
        raise ConfigError(msg.at("typed_config.@type"),
                          f"a {'listener' if downstream else 'cluster'} takes {want}, got {type_url!r}")
    if type_url != want:
        raise ConfigError(msg.at("typed_config.@type"),
                          f"unsupported transport socket {type_url!r} (fastproxy supports {TLS_SOCKET} "
                          f"with {want} and {RAW_BUFFER_SOCKET})")
    tpath = msg.at("typed_config")
    if downstream:
        return downstream_tls_context(typed, tpath)
    return upstream_tls_context(typed, tpath, **upstream_options)


def secret(item: Any, path: str) -> t.Secret:
    """An envoy.extensions.transport_sockets.tls.v3.Secret (static_resources.secrets, an
    SDS resource)."""
    msg = Message(item, path, ("name", "tls_certificate", "session_ticket_keys", "validation_context",
                               "generic_secret"), ignore=("@type",))
    name = msg.string("name", required=True, non_empty=True)
    kind = _oneof(msg, ("tls_certificate", "session_ticket_keys", "validation_context", "generic_secret"),
                  required=True)
    if kind == "generic_secret":
        raise ConfigError(msg.at(kind), "generic secrets are unsupported in fastproxy (nothing uses them)")
    if kind == "tls_certificate":
        return t.Secret(name, tls_certificate=tls_certificate(msg.raw(kind), msg.at(kind)))
    if kind == "validation_context":
        return t.Secret(name, validation_context=validation_context(msg.raw(kind), msg.at(kind)))
    tk = msg.message(kind, ("keys",))
    keys = tuple(_ticket_key(entry, kpath) for entry, kpath in tk.repeated("keys"))
    if not keys:
        raise ConfigError(tk.at("keys"), "at least one key is needed")
    return t.Secret(name, session_ticket_keys=keys)


__all__ = ["transport_socket", "downstream_tls_context", "upstream_tls_context", "secret", "data_source",
           "TLS_SOCKET", "RAW_BUFFER_SOCKET", "DOWNSTREAM_TLS_TYPE", "UPSTREAM_TLS_TYPE", "SECRET_TYPE"]
