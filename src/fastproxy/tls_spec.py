"""A TLS context model (fastproxy.model_tls) compiled into the spec dict the core's
``Engine.make_tls_context`` / ``TlsContextHandle.update`` take (its keys are in the core's
contract, /docs/architecture.md "TLS"): files and environment variables read now, secrets
named by SDS resolved, Envoy's defaults filled in.

Envoy 1.40's defaults, which fastproxy keeps: a server speaks TLS 1.2 to 1.3, a client
(upstream) TLS 1.2 only (TlsParameters: "TLSv1_2 for clients and TLSv1_3 for servers";
envoyproxy/envoy#9300, TLS 1.3 by default upstream, is still open). An upstream context
keeps one session per host for resumption (max_session_keys 1). Cipher suites, curves and
signature algorithms left empty are Envoy's defaults (TlsParameters in Envoy's
tls/v3/common.proto, non-FIPS builds), not OpenSSL's wider ones.
"""
from __future__ import annotations

from typing import Callable, Optional

from .errors import ConfigError
from .model_tls import (TLS_VERSIONS, CertificateValidationContext, DownstreamTlsContext, SdsSecretConfig,
                        Secret, TlsCertificate, UpstreamTlsContext, certificate_hash, check_san_needs_ca,
                        spki_hash)

SERVER_DEFAULT_VERSIONS = (0x0303, 0x0304)
CLIENT_DEFAULT_VERSIONS = (0x0303, 0x0303)
# Envoy's defaults, the same for servers and clients ([A|B]: equal preference in BoringSSL).
DEFAULT_CIPHER_SUITES = ("[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
                         "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]",
                         "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384")
DEFAULT_ECDH_CURVES = ("X25519", "P-256")
DEFAULT_SIGNATURE_ALGORITHMS = ("ecdsa_secp256r1_sha256", "rsa_pss_rsae_sha256", "rsa_pkcs1_sha256",
                                "ecdsa_secp384r1_sha384", "rsa_pss_rsae_sha384", "rsa_pkcs1_sha384",
                                "rsa_pss_rsae_sha512", "rsa_pkcs1_sha512", "rsa_pkcs1_sha1")



def flatten_ciphers(suites: tuple) -> Optional[list]:
    """Envoy's cipher_suites with its equal-preference groups ``[A|B]`` as plain names in
    order (OpenSSL's server preference has no groups); None when none is given."""
    if not suites:
        return None
    out: list = []
    for s in suites:
        names = s[1:-1].split("|") if s.startswith("[") and s.endswith("]") else [s]
        out.extend(n for n in names if n and n not in out)
    return out


Lookup = Callable[[SdsSecretConfig], Secret]


def _certificate(cert: TlsCertificate, path: str) -> dict:
    return {"chain": cert.certificate_chain.read(path + ".certificate_chain"),
            "key": cert.private_key.read(path + ".private_key"),
            "password": cert.password.read(path + ".password") if cert.password is not None else None}


def _validation(v: Optional[CertificateValidationContext], path: str) -> dict:
    if v is None:
        return {"trusted_ca": None, "crl": None, "san_matchers": [], "cert_hashes": [], "spki_hashes": [],
                "trust_chain_verification": "VERIFY_TRUST_CHAIN", "allow_expired_certificate": False}
    return {
        "trusted_ca": v.trusted_ca.read(path + ".trusted_ca") if v.trusted_ca is not None else None,
        "crl": v.crl.read(path + ".crl") if v.crl is not None else None,
        "san_matchers": [{"type": m.san_type,
                          "match": {m.matcher.kind: m.matcher.value, "ignore_case": m.matcher.ignore_case}}
                         for m in v.match_typed_subject_alt_names],
        "cert_hashes": [certificate_hash(h, f"{path}.verify_certificate_hash[{i}]")
                        for i, h in enumerate(v.verify_certificate_hash)],
        "spki_hashes": [spki_hash(h, f"{path}.verify_certificate_spki[{i}]")
                        for i, h in enumerate(v.verify_certificate_spki)],
        "trust_chain_verification": v.trust_chain_verification,
        "allow_expired_certificate": v.allow_expired_certificate,
    }


def _merge_validation(default: Optional[CertificateValidationContext],
                      dynamic: CertificateValidationContext) -> CertificateValidationContext:
    """Envoy's combined_validation_context, protobuf's MergeFrom of the SDS secret into the
    default context: a repeated field (SAN matchers, hashes) is the default's entries then
    the secret's; any other field is the secret's where it sets one, else the default's."""
    if default is None:
        return dynamic
    fresh = CertificateValidationContext()
    kw = {}
    for f in CertificateValidationContext.__dataclass_fields__:
        mine, theirs = getattr(default, f), getattr(dynamic, f)
        if isinstance(mine, tuple):
            kw[f] = mine + theirs
        else:
            kw[f] = theirs if theirs != getattr(fresh, f) else mine
    return CertificateValidationContext(**kw)


def _secret(lookup: Lookup, config: SdsSecretConfig, kind: str, path: str) -> Secret:
    secret = lookup(config)
    if getattr(secret, kind) is None:
        raise ConfigError(path, f"secret {config.name!r} holds no {kind}")
    return secret


def compile_context(ctx, lookup: Lookup, path: str) -> dict:
    """The spec dict of a DownstreamTlsContext (server) or UpstreamTlsContext (client).
    ``lookup(SdsSecretConfig)`` returns the Secret of that name or raises ConfigError (a
    static name that does not exist, a file without it). Errors name
    ``path`` (the context's) and the field, or the secret."""
    server = isinstance(ctx, DownstreamTlsContext)
    if not server and not isinstance(ctx, UpstreamTlsContext):
        raise TypeError(f"expected DownstreamTlsContext or UpstreamTlsContext, got {type(ctx).__name__}")
    common = ctx.common_tls_context
    cpath = path + ".common_tls_context"
    certificates = [_certificate(c, f"{cpath}.tls_certificates[{i}]") for i, c in enumerate(common.tls_certificates)]
    for i, sds in enumerate(common.tls_certificate_sds_secret_configs):
        secret = _secret(lookup, sds, "tls_certificate", f"{cpath}.tls_certificate_sds_secret_configs[{i}]")
        certificates.append(_certificate(secret.tls_certificate, f"secrets[{sds.name}].tls_certificate"))
    validation = common.validation_context
    vpath = cpath + ".validation_context"
    if common.validation_context_sds_secret_config is not None:
        sds = common.validation_context_sds_secret_config
        secret = _secret(lookup, sds, "validation_context", cpath + ".validation_context_sds_secret_config")
        validation = _merge_validation(validation, secret.validation_context)
        vpath = f"secrets[{sds.name}].validation_context"
        check_san_needs_ca(validation, vpath)
    params = common.tls_params
    low_default, high_default = SERVER_DEFAULT_VERSIONS if server else CLIENT_DEFAULT_VERSIONS
    low = TLS_VERSIONS[params.minimum_protocol_version] or low_default
    high = TLS_VERSIONS[params.maximum_protocol_version] or max(high_default, low)
    if low > high:
        raise ConfigError(cpath + ".tls_params.tls_minimum_protocol_version",
                          f"{params.minimum_protocol_version} is above the maximum version")
    spec = {
        "certificates": certificates,
        "min_version": low, "max_version": high,
        "cipher_suites": flatten_ciphers(params.cipher_suites or DEFAULT_CIPHER_SUITES),
        "ecdh_curves": list(params.ecdh_curves or DEFAULT_ECDH_CURVES),
        "signature_algorithms": list(params.signature_algorithms or DEFAULT_SIGNATURE_ALGORITHMS),
        "alpn": [p.encode() for p in common.alpn_protocols],
        **_validation(validation, vpath),
    }
    if server:
        keys = None
        if ctx.session_ticket_keys:
            keys = [k.read(f"{path}.session_ticket_keys.keys[{i}]") for i, k in enumerate(ctx.session_ticket_keys)]
            kpath = path + ".session_ticket_keys.keys"
        elif ctx.session_ticket_keys_sds_secret_config is not None:
            sds = ctx.session_ticket_keys_sds_secret_config
            secret = _secret(lookup, sds, "session_ticket_keys", path + ".session_ticket_keys_sds_secret_config")
            keys = [k.read(f"secrets[{sds.name}].session_ticket_keys.keys[{i}]")
                    for i, k in enumerate(secret.session_ticket_keys)]
            kpath = f"secrets[{sds.name}].session_ticket_keys.keys"
        for i, k in enumerate(keys or ()):
            if len(k) != 80:
                # Envoy: "Incorrect TLS session ticket key length. Length 79, expected length 80."
                raise ConfigError(f"{kpath}[{i}]", f"a session ticket key is 80 bytes, got {len(k)}")
        spec.update({
            "require_client_certificate": ctx.require_client_certificate,
            "session_ticket_keys": keys,
            "disable_stateless_session_resumption": ctx.disable_stateless_session_resumption,
            "disable_stateful_session_resumption": ctx.disable_stateful_session_resumption,
            "session_timeout": ctx.session_timeout,
        })
    else:
        spec.update({"sni": ctx.sni or None, "auto_sni": ctx.auto_sni,
                     "auto_san_validation": ctx.auto_san_validation,
                     "max_session_keys": ctx.max_session_keys})
    return spec


__all__ = ["compile_context", "flatten_ciphers", "certificate_hash", "spki_hash",
           "SERVER_DEFAULT_VERSIONS", "CLIENT_DEFAULT_VERSIONS", "DEFAULT_CIPHER_SUITES", "DEFAULT_ECDH_CURVES",
           "DEFAULT_SIGNATURE_ALGORITHMS"]
