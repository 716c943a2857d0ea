# The HTTP connection manager's config (HttpCfg), built on the main thread with the GIL from
# an HttpConnectionManager model (make_http_cfg) and shared read-only by the workers; its
# reference count lets the last snapshot holding it free it on any thread.

cdef void http_cfg_decref(HttpCfg* h) noexcept nogil:
    if h == NULL or fp_atomic_add_int(&h.refcnt, -1) != 0:
        return
    route_provider_decref(h.routes)
    http_cfg_free_filters(h)
    alog_sinks_free(h.logs, h.nlogs)
    free(h.server_name)
    free(h.via)
    free(h.default_host_10)
    free(h.internal_cidrs)
    if h.h2_option != NULL:
        nghttp2_option_del(<nghttp2_option*>h.h2_option)
    free(h)


cdef class HttpCfgHandle(ConnHandler):
    """The main thread's reference to an HTTP connection manager config; given to
    Engine.make_listener, it makes the listener's connections HTTP ones."""
    cdef HttpCfg* h
    cdef readonly RouteProviderHandle routes    # its routes (a provider RDS may share)

    def __dealloc__(self):
        http_cfg_decref(self.h)

    cdef int attach(self, ListenerCfg* cfg, StatBlockHandle stats) except -1:
        """stats: the listener's listener.<address>.http.<stat_prefix>.* block, or None."""
        cfg.start = hconn_start
        cfg.http = self.h
        fp_atomic_add_int(&self.h.refcnt, 1)
        if stats is not None:
            cfg.lhstats = stats.b
        return 0


stat_kind_add("listener_http", LISTENER_HTTP_STATS, LISTENER_HTTP_GAUGES)
stat_kind_add("http1", HTTP1_STATS, HTTP1_GAUGES)
stat_kind_add("http2", HTTP2_STATS, HTTP2_GAUGES)
stat_kind_add("http", HTTP_STATS, HTTP_GAUGES, ("downstream_rq_time",))


cdef int _compile_internal_addresses(HttpCfg* h, iac) except -1:
    """internal_address_config -> h.internal_mode (and h.internal_cidrs)."""
    import ipaddress
    from fastproxy.validation import parse_cidr
    cdef InternalCidr* r
    cdef int i
    if iac is None:
        h.internal_mode = IA_NONE
        return 0
    if not iac.cidr_ranges:
        h.internal_mode = IA_DEFAULT
        return 0
    h.internal_cidrs = <InternalCidr*>calloc(len(iac.cidr_ranges), sizeof(InternalCidr))
    if h.internal_cidrs == NULL:
        raise MemoryError()
    h.internal_mode = IA_CIDRS
    for i, text in enumerate(iac.cidr_ranges):
        net = parse_cidr(text, f"internal_address_config.cidr_ranges[{i}]")
        r = &h.internal_cidrs[i]
        r.v6 = net.version == 6
        r.plen = net.prefixlen
        packed = net.network_address.packed
        memcpy(r.addr, <char*>packed, len(packed))
        h.ninternal = i + 1
    return 0


def make_route_table(route_config, http_filters, cluster_ref, int nworkers, str path="route_config"):
    """Compile a fastproxy.http.RouteConfiguration for connection managers with these
    http_filters (their per-route configs are compiled into the table, which owns them);
    cluster_ref(name) -> ClusterHandle, or None for a name with no cluster (503 NC)."""
    cdef _FilterCompiler fcomp = _FilterCompiler.__new__(_FilterCompiler)
    cdef RouteTableHandle rt
    fcomp.h = NULL                      # per-route configs only
    fcomp.specs = list(http_filters)
    fcomp.keep = []
    fcomp.route_keep = []
    fcomp.regex_copies = nworkers
    rt = compile_route_table(route_config, {}, nworkers, path,
                             per_filter=fcomp.route_configs if fcomp.specs else None,
                             cluster_ref=cluster_ref)
    fcomp.give_route_configs(rt)
    return rt


def make_http_cfg(hcm, StatBlockHandle stats, RouteProviderHandle routes not None, int nworkers,
                  StatBlockHandle http1_stats=None, AsyncBridge async_bridge=None,
                  StatBlockHandle http2_stats=None):
    """Compile a fastproxy.http.HttpConnectionManager (but its routes: `routes`, a
    RouteProvider with tables from make_route_table for the same http_filters); async_bridge:
    the proxy's, where its Python filters' async hooks run; http1_stats / http2_stats: the
    server-wide http1.* / http2.* blocks (None: not counted)."""
    cdef HttpCfgHandle hh = HttpCfgHandle.__new__(HttpCfgHandle)
    cdef _FilterCompiler fcomp
    cdef HttpCfg* h = <HttpCfg*>calloc(1, sizeof(HttpCfg))
    cdef bytes server
    if h == NULL:
        raise MemoryError()
    h.refcnt = 1
    hh.h = h
    h.routes = routes.p
    fp_atomic_add_int(&routes.p.refcnt, 1)
    hh.routes = routes
    h.filter_buffer_limit = FILTER_BUFFER_LIMIT_DEFAULT
    fcomp = _FilterCompiler.__new__(_FilterCompiler)
    fcomp.h = h
    fcomp.specs = list(hcm.http_filters)
    fcomp.keep = []
    fcomp.bridge = async_bridge
    fcomp.regex_copies = nworkers
    fcomp.compile("http_connection_manager")
    if fcomp.keep:
        Py_INCREF(fcomp.keep)
        h.py_keep = <PyObject*>fcomp.keep
    h.stats = stats.b
    ms = lambda v: 0 if not v else max(1, int(v * 1000))
    h.idle_timeout_ms = ms(hcm.idle_timeout)
    h.request_headers_timeout_ms = ms(hcm.request_headers_timeout)
    h.stream_idle_timeout_ms = ms(hcm.stream_idle_timeout)
    h.request_timeout_ms = ms(hcm.request_timeout)
    h.allow_websocket = any(u.enabled and u.upgrade_type.lower() == "websocket"
                            for u in hcm.upgrade_configs)
    h.allow_connect = any(u.enabled and u.upgrade_type.lower() == "connect"
                          for u in hcm.upgrade_configs)
    alog_compile(h, hcm)
    h.max_requests_per_connection = hcm.max_requests_per_connection or 0
    h.max_head = hcm.max_request_headers_kb * 1024
    h.max_fields = hcm.max_headers_count
    h.max_request_bytes = hcm.max_request_bytes or 0
    h.use_remote_address = hcm.use_remote_address
    h.generate_request_id = hcm.generate_request_id
    h.suppress_envoy_headers = bool(hcm.suppress_envoy_headers)
    h.xff_num_trusted_hops = hcm.xff_num_trusted_hops
    _compile_internal_addresses(h, hcm.internal_address_config)
    h.local_ip_len = _envoy_local_address(h.local_ip, sizeof(h.local_ip))
    server = (hcm.server_name or "").encode()
    h.server_name = <char*>malloc(len(server) + 1)
    if h.server_name == NULL:
        raise MemoryError()
    memcpy(h.server_name, <char*>server, len(server) + 1)
    h.server_name_len = len(server)
    h.server_mode = {"OVERWRITE": SERVER_OVERWRITE, "APPEND_IF_ABSENT": SERVER_APPEND_IF_ABSENT,
                     "PASS_THROUGH": SERVER_PASS_THROUGH}[hcm.server_header_transformation]
    h.accept_http_10 = hcm.accept_http_10
    via = (hcm.via or "").encode()
    if via:
        h.via = <char*>malloc(len(via))
        if h.via == NULL:
            raise MemoryError()
        memcpy(h.via, <char*>via, len(via))
        h.via_len = len(via)
    h.skip_xff_append = hcm.skip_xff_append
    h.xfcc_mode = XFCC_MODES[hcm.forward_client_cert_details]
    details = hcm.set_current_client_cert_details
    h.xfcc_details = 0
    if details is not None:
        for name, bit in XFCC_DETAILS.items():
            if getattr(details, name):
                h.xfcc_details |= bit
    h.preserve_external_request_id = hcm.preserve_external_request_id
    h.always_set_request_id = hcm.always_set_request_id_in_response
    h.normalize_path = hcm.normalize_path
    h.merge_slashes = hcm.merge_slashes
    h.escaped_slashes = {"KEEP_UNCHANGED": ES_KEEP, "REJECT_REQUEST": ES_REJECT,
                         "UNESCAPE_AND_REDIRECT": ES_REDIRECT, "UNESCAPE_AND_FORWARD": ES_FORWARD}[
        hcm.path_with_escaped_slashes_action]
    h.strip_port = {"NONE": STRIP_PORT_NONE, "MATCHING": STRIP_PORT_MATCHING, "ANY": STRIP_PORT_ANY}[
        hcm.strip_host_port]
    h.underscores = {"ALLOW": US_ALLOW, "REJECT_REQUEST": US_REJECT, "DROP_HEADER": US_DROP}[
        hcm.headers_with_underscores_action]
    if http1_stats is not None:
        h.http1_stats = http1_stats.b
    elif h.underscores != US_ALLOW:
        raise ValueError("headers_with_underscores_action needs the http1.* stat block")
    h.codec_type = {"AUTO": CODEC_AUTO, "HTTP1": CODEC_HTTP1, "HTTP2": CODEC_HTTP2}[hcm.codec_type]
    h2_options_compile(hcm.http2_protocol_options.to_spec(), &h.h2)
    h.h2_option = h2_option_new(&h.h2)
    if h.h2_option == NULL:
        raise MemoryError()
    if http2_stats is not None:
        h.http2_stats = http2_stats.b
    h.drain_timeout_ms = ms(hcm.drain_timeout)
    host10 = (hcm.default_host_for_http_10 or "").encode()
    if host10:
        h.default_host_10 = <char*>malloc(len(host10))
        if h.default_host_10 == NULL:
            raise MemoryError()
        memcpy(h.default_host_10, <char*>host10, len(host10))
        h.default_host_10_len = len(host10)
    return hh
