"""Every stat block of the compiled core, defined once (Envoy's stat macros, as a table).

Each block is one row per stat: the index constant the core writes it with, its Envoy name
and its kind (counter or gauge). build_ext.py turns this table into core/stats_table.pxi
(the index enum, the names tuple and the gauges set of each block) before Cython runs, so a
stat is added or removed here and nowhere else; the core checks at import that the module
was built from this very table (core/stats.pxi), and the Python side (admin, prometheus)
reads names and kinds from the core's blocks or from here.

Order is layout: a row's index is its position in the block, and some rows are addressed
by arithmetic (see the notes), which the import-time check also verifies.
"""
from __future__ import annotations

from typing import NamedTuple

COUNTER = "counter"
GAUGE = "gauge"


class StatBlockDef(NamedTuple):
    """One block: `name` gives the Python names (NAME_STATS, NAME_GAUGES), `nstats` the C
    constant of its length, `stats` its rows (constant, Envoy name, kind)."""
    name: str
    nstats: str
    where: str
    stats: tuple


def _xx(prefix: str, first: str) -> tuple:
    """The 1xx..5xx rows of a status-class counter run: `first` is the 1xx constant; the
    core adds the class to it (the other four rows have no constant of their own)."""
    out = [(first, f"{prefix}1xx", COUNTER)]
    out += [(None, f"{prefix}{k}xx", COUNTER) for k in range(2, 6)]
    return tuple(out)


# The cipher suites and groups an SSL block has a row for (Envoy prints OpenSSL's names for
# TLS <= 1.2 suites and the IANA names for TLS 1.3 ones, as SSL_CIPHER_get_name does; the
# groups as Envoy names them). The IANA id of each suite is what the core maps from.
SSL_CIPHERS = (
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
)
SSL_CIPHER_IDS = (
    0x1301, 0x1302, 0x1303,
    0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
    0xC009, 0xC013, 0xC00A, 0xC014,
    0x009C, 0x009D, 0x002F, 0x0035,
    0x009E, 0x009F, 0xCCAA,
)
SSL_CURVES = ("X25519", "P-256", "P-384", "P-521", "X448")

BLOCKS = (
    StatBlockDef("LISTENER", "L_NSTATS", "listener.<address>_<port>.*", (
        ("L_CX_TOTAL", "downstream_cx_total", COUNTER),
        ("L_CX_ACTIVE", "downstream_cx_active", GAUGE),
        ("L_CX_OVERFLOW", "downstream_cx_overflow", COUNTER),
        ("L_ACCEPT_FAIL", "downstream_cx_accept_fail", COUNTER),
        ("L_CX_DESTROY", "downstream_cx_destroy", COUNTER),
        ("L_GLOBAL_CX_OVERFLOW", "downstream_global_cx_overflow", COUNTER),
        # filter chains (core/listener_filters.pxi): no chain matched and no default one;
        # connections in their listener filter, and those its timeout ended
        ("L_NO_FILTER_CHAIN_MATCH", "no_filter_chain_match", COUNTER),
        ("L_PRE_CX_ACTIVE", "downstream_pre_cx_active", GAUGE),
        ("L_PRE_CX_TIMEOUT", "downstream_pre_cx_timeout", COUNTER),
    )),
    # server-wide, as Envoy's listener filter scope has it
    StatBlockDef("TLS_INSPECTOR", "TI_NSTATS", "tls_inspector.*", (
        ("TI_CLIENT_HELLO_TOO_LARGE", "client_hello_too_large", COUNTER),
        ("TI_TLS_FOUND", "tls_found", COUNTER),
        ("TI_TLS_NOT_FOUND", "tls_not_found", COUNTER),
        ("TI_ALPN_FOUND", "alpn_found", COUNTER),
        ("TI_ALPN_NOT_FOUND", "alpn_not_found", COUNTER),
        ("TI_SNI_FOUND", "sni_found", COUNTER),
        ("TI_SNI_NOT_FOUND", "sni_not_found", COUNTER),
    )),
    StatBlockDef("TCP", "T_NSTATS", "tcp.<stat_prefix>.*", (
        ("T_CX_TOTAL", "downstream_cx_total", COUNTER),
        ("T_CX_ACTIVE", "downstream_cx_active", GAUGE),
        ("T_NO_ROUTE", "downstream_cx_no_route", COUNTER),
        ("T_RX_BYTES", "downstream_cx_rx_bytes_total", COUNTER),
        ("T_TX_BYTES", "downstream_cx_tx_bytes_total", COUNTER),
        ("T_IDLE_TIMEOUT", "idle_timeout", COUNTER),
        ("T_PAUSED", "downstream_flow_control_paused_reading_total", COUNTER),
        ("T_RESUMED", "downstream_flow_control_resumed_reading_total", COUNTER),
        ("T_SPLICED", "bytes_spliced", COUNTER),
        ("T_COPIED", "bytes_copied", COUNTER),
        ("T_FILTER_ERROR", "python_filter_error", COUNTER),
        ("T_RESET_SENT", "reset_sent", COUNTER),
    )),
    # then the upstream_rq_time histogram and the per-code counters (C_CODES)
    StatBlockDef("CLUSTER", "C_NSTATS", "cluster.<name>.*", (
        ("C_CX_TOTAL", "upstream_cx_total", COUNTER),
        ("C_CX_ACTIVE", "upstream_cx_active", GAUGE),
        ("C_CONNECT_FAIL", "upstream_cx_connect_fail", COUNTER),
        ("C_CONNECT_TIMEOUT", "upstream_cx_connect_timeout", COUNTER),
        ("C_RX_BYTES", "upstream_cx_rx_bytes_total", COUNTER),
        ("C_TX_BYTES", "upstream_cx_tx_bytes_total", COUNTER),
        ("C_NONE_HEALTHY", "upstream_cx_none_healthy", COUNTER),
        ("C_DESTROY_LOCAL", "upstream_cx_destroy_local", COUNTER),      # + 1: remote (so the
        ("C_DESTROY_REMOTE", "upstream_cx_destroy_remote", COUNTER),    # *_REMOTE ones below)
        ("C_ATTEMPTS_EXCEEDED", "upstream_cx_connect_attempts_exceeded", COUNTER),
        ("C_RQ_TOTAL", "upstream_rq_total", COUNTER),
        *_xx("upstream_rq_", "C_RQ_1XX"),                               # then C_RQ_COMPLETED
        ("C_RQ_COMPLETED", "upstream_rq_completed", COUNTER),
        ("C_RQ_TIMEOUT", "upstream_rq_timeout", COUNTER),
        ("C_CX_DESTROY", "upstream_cx_destroy", COUNTER),
        ("C_DESTROY_WITH_ACTIVE_RQ", "upstream_cx_destroy_with_active_rq", COUNTER),
        ("C_DESTROY_LOCAL_WITH_ACTIVE_RQ", "upstream_cx_destroy_local_with_active_rq", COUNTER),
        ("C_DESTROY_REMOTE_WITH_ACTIVE_RQ", "upstream_cx_destroy_remote_with_active_rq", COUNTER),
        ("C_CX_HTTP1_TOTAL", "upstream_cx_http1_total", COUNTER),
        ("C_RQ_ACTIVE", "upstream_rq_active", GAUGE),
        ("C_RQ_PENDING_TOTAL", "upstream_rq_pending_total", COUNTER),
        ("C_RQ_PENDING_ACTIVE", "upstream_rq_pending_active", GAUGE),
        ("C_RQ_PENDING_FAILURE_EJECT", "upstream_rq_pending_failure_eject", COUNTER),
        ("C_CX_IDLE_TIMEOUT", "upstream_cx_idle_timeout", COUNTER),
        ("C_CX_MAX_REQUESTS", "upstream_cx_max_requests", COUNTER),
        ("C_CX_OVERFLOW", "upstream_cx_overflow", COUNTER),             # circuit breakers
        ("C_CX_POOL_OVERFLOW", "upstream_cx_pool_overflow", COUNTER),
        ("C_RQ_PENDING_OVERFLOW", "upstream_rq_pending_overflow", COUNTER),
        ("C_RQ_ACTIVE_OVERFLOW", "upstream_rq_active_overflow", COUNTER),
        ("C_RQ_RETRY_OVERFLOW", "upstream_rq_retry_overflow", COUNTER),
        ("C_CX_MAX_DURATION", "upstream_cx_max_duration_reached", COUNTER),
        ("C_CX_HTTP2_TOTAL", "upstream_cx_http2_total", COUNTER),
        ("C_RQ_RX_RESET", "upstream_rq_rx_reset", COUNTER),
        ("C_RQ_TX_RESET", "upstream_rq_tx_reset", COUNTER),
        ("C_CX_CLOSE_NOTIFY", "upstream_cx_close_notify", COUNTER),     # (HTTP/2: a GOAWAY)
        # retries, hedging and shadows (the router's retry state, core/http/retry*.pxi)
        ("C_RQ_RETRY", "upstream_rq_retry", COUNTER),
        ("C_RQ_RETRY_SUCCESS", "upstream_rq_retry_success", COUNTER),
        ("C_RQ_RETRY_LIMIT_EXCEEDED", "upstream_rq_retry_limit_exceeded", COUNTER),
        ("C_RQ_RETRY_BACKOFF_EXPONENTIAL", "upstream_rq_retry_backoff_exponential", COUNTER),
        ("C_RQ_RETRY_BACKOFF_RATELIMITED", "upstream_rq_retry_backoff_ratelimited", COUNTER),
        ("C_RQ_PER_TRY_TIMEOUT", "upstream_rq_per_try_timeout", COUNTER),
        ("C_RQ_PER_TRY_IDLE_TIMEOUT", "upstream_rq_per_try_idle_timeout", COUNTER),
        ("C_RETRY_OR_SHADOW_ABANDONED", "retry_or_shadow_abandoned", COUNTER),
        # the load balancer (core/upstream/load_balancer.pxi)
        ("C_LB_HEALTHY_PANIC", "lb_healthy_panic", COUNTER),
        ("C_MEMBERSHIP_CHANGE", "membership_change", COUNTER),
    )),
    # A cluster's active health checks (Envoy's cluster.<name>.health_check.*): allocated
    # only for a cluster with health_checks, as Envoy creates them only then.
    StatBlockDef("HEALTH_CHECK", "HC_NSTATS", "cluster.<name>.health_check.*", (
        ("HC_ATTEMPT", "attempt", COUNTER),
        ("HC_SUCCESS", "success", COUNTER),
        ("HC_FAILURE", "failure", COUNTER),
        ("HC_NETWORK_FAILURE", "network_failure", COUNTER),
        ("HC_PASSIVE_FAILURE", "passive_failure", COUNTER),
        ("HC_VERIFY_CLUSTER", "verify_cluster", COUNTER),
        ("HC_HEALTHY", "healthy", GAUGE),
        ("HC_DEGRADED", "degraded", GAUGE),
    )),
    # A cluster's outlier detector (Envoy's cluster.<name>.outlier_detection.*): allocated
    # only for a cluster with outlier_detection.
    StatBlockDef("OUTLIER", "OD_NSTATS", "cluster.<name>.outlier_detection.*", (
        ("OD_EJECTIONS_ENFORCED_TOTAL", "ejections_enforced_total", COUNTER),
        ("OD_EJECTIONS_ACTIVE", "ejections_active", GAUGE),
        ("OD_EJECTIONS_OVERFLOW", "ejections_overflow", COUNTER),
        ("OD_EJECTIONS_ENFORCED_CONSECUTIVE_5XX", "ejections_enforced_consecutive_5xx", COUNTER),
        ("OD_EJECTIONS_DETECTED_CONSECUTIVE_5XX", "ejections_detected_consecutive_5xx", COUNTER),
        ("OD_EJECTIONS_ENFORCED_SUCCESS_RATE", "ejections_enforced_success_rate", COUNTER),
        ("OD_EJECTIONS_DETECTED_SUCCESS_RATE", "ejections_detected_success_rate", COUNTER),
        ("OD_EJECTIONS_ENFORCED_CONSECUTIVE_GATEWAY_FAILURE", "ejections_enforced_consecutive_gateway_failure", COUNTER),
        ("OD_EJECTIONS_DETECTED_CONSECUTIVE_GATEWAY_FAILURE", "ejections_detected_consecutive_gateway_failure", COUNTER),
        ("OD_EJECTIONS_ENFORCED_CONSECUTIVE_LOCAL_ORIGIN_FAILURE", "ejections_enforced_consecutive_local_origin_failure", COUNTER),
        ("OD_EJECTIONS_DETECTED_CONSECUTIVE_LOCAL_ORIGIN_FAILURE", "ejections_detected_consecutive_local_origin_failure", COUNTER),
        ("OD_EJECTIONS_ENFORCED_LOCAL_ORIGIN_SUCCESS_RATE", "ejections_enforced_local_origin_success_rate", COUNTER),
        ("OD_EJECTIONS_DETECTED_LOCAL_ORIGIN_SUCCESS_RATE", "ejections_detected_local_origin_success_rate", COUNTER),
        ("OD_EJECTIONS_ENFORCED_FAILURE_PERCENTAGE", "ejections_enforced_failure_percentage", COUNTER),
        ("OD_EJECTIONS_DETECTED_FAILURE_PERCENTAGE", "ejections_detected_failure_percentage", COUNTER),
        ("OD_EJECTIONS_ENFORCED_FAILURE_PERCENTAGE_LOCAL_ORIGIN", "ejections_enforced_local_origin_failure_percentage", COUNTER),
        ("OD_EJECTIONS_DETECTED_FAILURE_PERCENTAGE_LOCAL_ORIGIN", "ejections_detected_local_origin_failure_percentage", COUNTER),
        ("OD_EJECTIONS_TOTAL", "ejections_total", COUNTER),
        ("OD_EJECTIONS_CONSECUTIVE_5XX", "ejections_consecutive_5xx", COUNTER),
        ("OD_EJECTIONS_SUCCESS_RATE", "ejections_success_rate", COUNTER),     # (deprecated in Envoy)
        # (Envoy 1.40 lists it; no detector of it is built there or here: always 0)
        ("OD_EJECTIONS_DETECTED_DEGRADATION", "ejections_detected_degradation", COUNTER),
    )),
    # A cluster's hosts, as admin /clusters prints them (cluster::<address>::<stat>::<value>),
    # in Envoy's order: the counters, then the gauges.
    StatBlockDef("HOST", "HS_NSTATS", "a host of a cluster", (
        ("HS_CX_CONNECT_FAIL", "cx_connect_fail", COUNTER),
        ("HS_CX_TOTAL", "cx_total", COUNTER),
        ("HS_RQ_ERROR", "rq_error", COUNTER),
        ("HS_RQ_SUCCESS", "rq_success", COUNTER),
        ("HS_RQ_TIMEOUT", "rq_timeout", COUNTER),
        ("HS_RQ_TOTAL", "rq_total", COUNTER),
        ("HS_CX_ACTIVE", "cx_active", GAUGE),
        ("HS_RQ_ACTIVE", "rq_active", GAUGE),
        ("HS_RQ_PENDING_ACTIVE", "rq_pending_active", GAUGE),
    )),
    StatBlockDef("LISTENER_HTTP", "LH_NSTATS",
                 "listener.<address>_<port>.http.<stat_prefix>.*: the connection manager's", (
                     *_xx("downstream_rq_", "LH_RQ_1XX"),
                     ("LH_RQ_COMPLETED", "downstream_rq_completed", COUNTER),
                 )),
    # then the downstream_rq_time histogram
    StatBlockDef("HTTP", "H_NSTATS", "http.<stat_prefix>.*", (
        ("H_CX_TOTAL", "downstream_cx_total", COUNTER),
        ("H_CX_ACTIVE", "downstream_cx_active", GAUGE),
        ("H_RQ_TOTAL", "downstream_rq_total", COUNTER),
        ("H_RQ_ACTIVE", "downstream_rq_active", GAUGE),
        *_xx("downstream_rq_", "H_RQ_1XX"),                             # then H_RQ_COMPLETED
        ("H_RQ_COMPLETED", "downstream_rq_completed", COUNTER),
        ("H_RQ_TIME_MS", "downstream_rq_time_ms_total", COUNTER),       # sum of request times
        ("H_RQ_TIMEOUT", "downstream_rq_timeout", COUNTER),
        # a route's max_stream_duration (or the grpc-timeout it lets set it) ended a stream
        ("H_RQ_MAX_DURATION", "downstream_rq_max_duration_reached", COUNTER),
        ("H_CX_PROTOCOL_ERROR", "downstream_cx_protocol_error", COUNTER),
        ("H_RQ_RX_RESET", "downstream_rq_rx_reset", COUNTER),
        ("H_NO_ROUTE", "no_route", COUNTER),
        ("H_NO_CLUSTER", "no_cluster", COUNTER),                        # the route's cluster is not configured
        ("H_RQ_TOO_LARGE", "downstream_rq_too_large", COUNTER),
        ("H_BYTES_SPLICED", "bytes_spliced", COUNTER),                  # socket -> pipe -> socket
        ("H_BYTES_COPIED", "bytes_copied", COUNTER),                    # through user-space buffers
        # HTTP filter failures: Python exceptions, async timeouts, a filter (of any kind)
        # that could not be created
        ("H_PY_FILTER_ERROR", "python_filter_error", COUNTER),
        ("H_RQ_IDLE_TIMEOUT", "downstream_rq_idle_timeout", COUNTER),   # stream_idle_timeout
        ("H_RQ_HEADER_TIMEOUT", "downstream_rq_header_timeout", COUNTER),
        ("H_RQ_HTTP1_TOTAL", "downstream_rq_http1_total", COUNTER),
        # counted when the first read returns (Envoy makes its codec then)
        ("H_CX_HTTP1_TOTAL", "downstream_cx_http1_total", COUNTER),
        ("H_CX_HTTP1_ACTIVE", "downstream_cx_http1_active", GAUGE),
        ("H_RQ_HTTP2_TOTAL", "downstream_rq_http2_total", COUNTER),
        ("H_CX_HTTP2_TOTAL", "downstream_cx_http2_total", COUNTER),     # (when the codec is chosen)
        ("H_CX_HTTP2_ACTIVE", "downstream_cx_http2_active", GAUGE),
        ("H_CX_RX_BYTES", "downstream_cx_rx_bytes_total", COUNTER),
        ("H_CX_TX_BYTES", "downstream_cx_tx_bytes_total", COUNTER),
        ("H_CX_DESTROY", "downstream_cx_destroy", COUNTER),
        ("H_CX_DESTROY_LOCAL", "downstream_cx_destroy_local", COUNTER),     # + 1: remote
        ("H_CX_DESTROY_REMOTE", "downstream_cx_destroy_remote", COUNTER),
        ("H_CX_DESTROY_ACTIVE_RQ", "downstream_cx_destroy_active_rq", COUNTER),
        ("H_CX_DESTROY_LOCAL_ACTIVE_RQ", "downstream_cx_destroy_local_active_rq", COUNTER),  # + 1
        ("H_CX_DESTROY_REMOTE_ACTIVE_RQ", "downstream_cx_destroy_remote_active_rq", COUNTER),
        ("H_RQ_FAILED_PATH_NORMALIZATION", "downstream_rq_failed_path_normalization", COUNTER),
        ("H_RQ_REDIRECTED_NORMALIZED_PATH", "downstream_rq_redirected_with_normalized_path", COUNTER),
        # a response that said Connection: close because its listener version is draining
        ("H_CX_DRAIN_CLOSE", "downstream_cx_drain_close", COUNTER),
        # a connection closed because most of its streams were reset by the client right
        # after they began (Envoy's premature-reset check, the rapid reset attack)
        ("H_RQ_TOO_MANY_PREMATURE_RESETS", "downstream_rq_too_many_premature_resets", COUNTER),
    )),
    StatBlockDef("HTTP1", "H1S_NSTATS", "http1.*: server-wide", (
        ("H1S_DROPPED_UNDERSCORES", "dropped_headers_with_underscores", COUNTER),
        ("H1S_REJECTED_UNDERSCORES", "requests_rejected_with_underscores_in_headers", COUNTER),
    )),
    # The HTTP/2 codec's counters (Envoy's names): the server-wide http2.* block of the
    # downstream codec (core/http/codec_h2_server.pxi), and cluster.<name>.http2.* of the
    # upstream one.
    StatBlockDef("HTTP2", "H2_NSTATS", "http2.*: server-wide; cluster.<name>.http2.*", (
        ("H2_COOKIES_TOO_LARGE", "cookies_total_bytes_too_large", COUNTER),
        ("H2_DEFERRED_STREAM_CLOSE", "deferred_stream_close", COUNTER),
        ("H2_DROPPED_UNDERSCORES", "dropped_headers_with_underscores", COUNTER),
        ("H2_GOAWAY_SENT", "goaway_sent", COUNTER),
        ("H2_HEADER_LIST_TOO_LARGE", "header_list_size_too_large", COUNTER),    # max_request_headers_kb
        ("H2_HEADER_OVERFLOW", "header_overflow", COUNTER),                     # max_headers_count
        ("H2_HEADERS_CB_NO_STREAM", "headers_cb_no_stream", COUNTER),
        ("H2_INBOUND_EMPTY_FRAMES_FLOOD", "inbound_empty_frames_flood", COUNTER),
        ("H2_INBOUND_PRIORITY_FRAMES_FLOOD", "inbound_priority_frames_flood", COUNTER),
        ("H2_INBOUND_WINDOW_UPDATE_FRAMES_FLOOD", "inbound_window_update_frames_flood", COUNTER),
        ("H2_KEEPALIVE_TIMEOUT", "keepalive_timeout", COUNTER),
        ("H2_METADATA_EMPTY_FRAMES", "metadata_empty_frames", COUNTER),
        ("H2_NGHTTP2_DOWNSTREAM_CX", "nghttp2_downstream_connections", COUNTER),
        ("H2_NGHTTP2_UPSTREAM_CX", "nghttp2_upstream_connections", COUNTER),
        ("H2_OGHTTP2_DOWNSTREAM_CX", "oghttp2_downstream_connections", COUNTER),     # (never: nghttp2 only)
        ("H2_OGHTTP2_UPSTREAM_CX", "oghttp2_upstream_connections", COUNTER),
        ("H2_OUTBOUND_CONTROL_FLOOD", "outbound_control_flood", COUNTER),
        ("H2_OUTBOUND_FLOOD", "outbound_flood", COUNTER),
        ("H2_REJECTED_UNDERSCORES", "requests_rejected_with_underscores_in_headers", COUNTER),
        ("H2_RX_MESSAGING_ERROR", "rx_messaging_error", COUNTER),
        ("H2_RX_RESET", "rx_reset", COUNTER),
        ("H2_STREAM_REFUSED_ERRORS", "stream_refused_errors", COUNTER),
        ("H2_TRAILERS", "trailers", COUNTER),
        ("H2_TX_FLUSH_TIMEOUT", "tx_flush_timeout", COUNTER),
        ("H2_TX_RESET", "tx_reset", COUNTER),
        ("H2_STREAMS_ACTIVE", "streams_active", GAUGE),
        ("H2_PENDING_SEND_BYTES", "pending_send_bytes", GAUGE),
        ("H2_OUTBOUND_FRAMES_ACTIVE", "outbound_frames_active", GAUGE),
        ("H2_OUTBOUND_CONTROL_FRAMES_ACTIVE", "outbound_control_frames_active", GAUGE),
    )),
    # TLS on a listener or a cluster (listener.<address>_<port>.ssl.*, cluster.<name>.ssl.*):
    # Envoy's names. versions/ciphers/curves are fixed rows, one per name OpenSSL 3 can
    # negotiate (core/tls/transport.pxi maps the negotiated one to its row; a name not
    # listed is not counted there).
    StatBlockDef("SSL", "SSL_NSTATS", "listener.<address>_<port>.ssl.*, cluster.<name>.ssl.*", (
        ("SSL_CONNECTION_ERROR", "connection_error", COUNTER),
        ("SSL_HANDSHAKE", "handshake", COUNTER),
        ("SSL_SESSION_REUSED", "session_reused", COUNTER),
        ("SSL_NO_CERTIFICATE", "no_certificate", COUNTER),
        ("SSL_FAIL_VERIFY_NO_CERT", "fail_verify_no_cert", COUNTER),
        ("SSL_FAIL_VERIFY_ERROR", "fail_verify_error", COUNTER),
        ("SSL_FAIL_VERIFY_SAN", "fail_verify_san", COUNTER),
        ("SSL_FAIL_VERIFY_CERT_HASH", "fail_verify_cert_hash", COUNTER),
        ("SSL_VERSION_TLS10", "versions.TLSv1", COUNTER),              # + (wire version - 0x0301)
        (None, "versions.TLSv1.1", COUNTER),
        (None, "versions.TLSv1.2", COUNTER),
        (None, "versions.TLSv1.3", COUNTER),
        *((f"SSL_CIPHER_{i}", f"ciphers.{name}", COUNTER) for i, name in enumerate(SSL_CIPHERS)),
        *((f"SSL_CURVE_{i}", f"curves.{name}", COUNTER) for i, name in enumerate(SSL_CURVES)),
    )),
    StatBlockDef("LOCAL_RATE_LIMIT", "LRL_NSTATS", "http_local_rate_limit.<stat_prefix>.*", (
        ("LRL_ENABLED", "enabled", COUNTER),
        ("LRL_OK", "ok", COUNTER),
        ("LRL_RATE_LIMITED", "rate_limited", COUNTER),
        ("LRL_ENFORCED", "enforced", COUNTER),
    )),
)

# Index arithmetic the core relies on: (base constant, offset, the stat found there).
ARITHMETIC = (
    *(("C_RQ_1XX", k, f"upstream_rq_{k + 1}xx") for k in range(5)),
    ("C_RQ_1XX", 5, "upstream_rq_completed"),
    ("C_DESTROY_LOCAL", 1, "upstream_cx_destroy_remote"),
    ("C_DESTROY_LOCAL_WITH_ACTIVE_RQ", 1, "upstream_cx_destroy_remote_with_active_rq"),
    *(("LH_RQ_1XX", k, f"downstream_rq_{k + 1}xx") for k in range(5)),
    ("LH_RQ_1XX", 5, "downstream_rq_completed"),
    *(("H_RQ_1XX", k, f"downstream_rq_{k + 1}xx") for k in range(5)),
    ("H_RQ_1XX", 5, "downstream_rq_completed"),
    ("H_CX_DESTROY_LOCAL", 1, "downstream_cx_destroy_remote"),
    ("H_CX_DESTROY_LOCAL_ACTIVE_RQ", 1, "downstream_cx_destroy_remote_active_rq"),
    *(("SSL_VERSION_TLS10", k, f"versions.TLSv1{'' if k == 0 else '.' + str(k)}") for k in range(4)),
)


def block(name: str) -> StatBlockDef:
    for b in BLOCKS:
        if b.name == name:
            return b
    raise KeyError(name)


def names(b: StatBlockDef) -> tuple:
    return tuple(row[1] for row in b.stats)


def gauges(b: StatBlockDef) -> frozenset:
    return frozenset(row[1] for row in b.stats if row[2] == GAUGE)


def check(blocks=BLOCKS, arithmetic=ARITHMETIC) -> dict:
    """Validate the table; returns {constant: index}. Raises ValueError naming the row of a
    duplicate constant or name, an unknown kind, or arithmetic that does not hold."""
    index = {}
    for b in blocks:
        seen = set()
        for i, (const, stat, kind) in enumerate(b.stats):
            where = f"stats_table {b.name}[{i}] ({stat})"
            if kind not in (COUNTER, GAUGE):
                raise ValueError(f"{where}: kind must be COUNTER or GAUGE, got {kind!r}")
            if stat in seen:
                raise ValueError(f"{where}: the name {stat!r} is in block {b.name} twice")
            seen.add(stat)
            if const is not None:
                if const in index:
                    raise ValueError(f"{where}: the constant {const} is defined twice")
                index[const] = i
        if b.nstats in index:
            raise ValueError(f"stats_table {b.name}: {b.nstats} is defined twice")
        index[b.nstats] = len(b.stats)
    by_const = {row[0]: b for b in blocks for row in b.stats if row[0] is not None}
    for const, offset, stat in arithmetic:
        b = by_const.get(const)
        i = index.get(const, -1) + offset
        if b is None or not 0 <= i < len(b.stats) or b.stats[i][1] != stat:
            raise ValueError(f"stats_table: {const} + {offset} must be {stat!r}")
    return index


def render_pxi(blocks=BLOCKS, arithmetic=ARITHMETIC) -> str:
    """core/stats_table.pxi: each block's index enum, names tuple and gauges set."""
    index = check(blocks, arithmetic)
    out = ["# Generated by build_ext.py from src/fastproxy/stats_table.py: edit the table there,",
           "# not this file (it is rewritten on every build where the table changed).", ""]
    for b in blocks:
        out.append(f"# {b.where}")
        out.append("cdef enum:")
        for const, _stat, _kind in b.stats:
            if const is not None:
                out.append(f"    {const} = {index[const]}")
        out.append(f"    {b.nstats} = {len(b.stats)}")
        out.append(f"{b.name}_STATS = {names(b)!r}")
        out.append(f"{b.name}_GAUGES = frozenset({tuple(sorted(gauges(b)))!r})")
        out.append("")
    out.append("STAT_BLOCKS = {")
    out += [f"    {b.name!r}: ({b.name}_STATS, {b.name}_GAUGES, {b.nstats})," for b in blocks]
    out.append("}")
    out.append("STAT_INDEX = {")
    out += [f"    {c!r}: {c}," for c in index]
    out.append("}")
    out.append("")
    return "\n".join(out)
