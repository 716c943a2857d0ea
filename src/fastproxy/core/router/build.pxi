# Building the route table on the main thread, with the GIL, from a RouteConfiguration model:
# validation, domain maps, run indexes, regexes, header operations (compile_route_table,
# RouteTableHandle), and _MatchBuilder, which builds the native filters' matchers too
# (the worker side of both: matchers.pxi).

# ---------------------------------------------------------------- building (main thread)

_RT_MATCH_KINDS = {"exact": RSM_EXACT, "prefix": RSM_PREFIX, "suffix": RSM_SUFFIX,
                   "contains": RSM_CONTAINS, "safe_regex": RSM_SAFE_REGEX}
_RT_APPEND_ACTIONS = {"APPEND_IF_EXISTS_OR_ADD": RHO_APPEND_IF_EXISTS_OR_ADD,
                      "ADD_IF_ABSENT": RHO_ADD_IF_ABSENT,
                      "OVERWRITE_IF_EXISTS_OR_ADD": RHO_OVERWRITE_IF_EXISTS_OR_ADD,
                      "OVERWRITE_IF_EXISTS": RHO_OVERWRITE_IF_EXISTS}
_RT_ACTION_NAMES = {RHO_REMOVE: "REMOVE", RHO_APPEND_IF_EXISTS_OR_ADD: "APPEND_IF_EXISTS_OR_ADD",
                    RHO_ADD_IF_ABSENT: "ADD_IF_ABSENT",
                    RHO_OVERWRITE_IF_EXISTS_OR_ADD: "OVERWRITE_IF_EXISTS_OR_ADD",
                    RHO_OVERWRITE_IF_EXISTS: "OVERWRITE_IF_EXISTS"}
_RT_LEVEL_NAMES = ("route", "virtual_host", "route_configuration")
_RT_PSEUDO = {":method": RHS_METHOD, ":path": RHS_PATH, ":authority": RHS_AUTHORITY,
              "host": RHS_AUTHORITY, ":scheme": RHS_SCHEME}
_RT_REDIRECT_CODES = (301, 302, 303, 307, 308)


_RT_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


cdef str _rt_lower(str s):
    """ASCII-only lowercasing, as the C side folds (and as Envoy's AsciiStrToLower does):
    str.lower() would also fold non-ASCII letters the matcher never folds."""
    return s.translate(_RT_ASCII_LOWER)


cdef bytes _rt_b(s):
    if isinstance(s, bytes):
        return s
    return (<str>s).encode("utf-8")


cdef object _rt_pystr(RouteStr s):
    if s.p == NULL:
        return None
    return s.p[:s.n].decode("utf-8", "surrogateescape")


cdef inline object _rt_pybytes(RouteStr s):
    return s.p[:s.n] if s.p != NULL else None


cdef uint64_t _rt_ms(v, str path) except? 0:
    """A duration of the model (seconds, None: unset) in whole milliseconds (0 when unset)."""
    if v is None:
        return 0
    if v < 0:
        raise ConfigError(path, "must not be negative")
    return <uint64_t>round(v * 1000.0)


cdef object _rt_grpc_timeouts(const RouteEntry* e):
    """route_debug's view of a route's gRPC timeouts (None: neither kind)."""
    if e.grpc_timeouts == RG_LEGACY:
        return {"max_grpc_timeout_ms": e.max_grpc_timeout_ms,
                "grpc_timeout_offset_ms": e.grpc_timeout_offset_ms}
    if e.grpc_timeouts == RG_STREAM:
        return {"max_stream_duration_ms": e.max_stream_duration_ms,
                "grpc_timeout_header_max_ms": e.grpc_header_max_ms if e.grpc_header_max_set else None,
                "grpc_timeout_header_offset_ms": e.grpc_header_offset_ms}
    return None


def _rt_literal_prefix(str pattern):
    """The literal text every full match of an RE2 pattern starts with ("" if unsure): the
    leading plain or escaped-punctuation ASCII characters, stopping before any character a
    quantifier applies to. A '|' anywhere means no prefix (it could be at the top level)."""
    out = []
    i = 0
    n = len(pattern)
    if "|" in pattern:
        return b""
    if pattern.startswith("^"):
        i = 1
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 < n and pattern[i + 1].isascii() and not pattern[i + 1].isalnum() \
                    and pattern[i + 1] > " ":
                lit = pattern[i + 1]
                nxt = i + 2
            else:
                break
        elif c in ".[]()*+?{}|^$" or not c.isascii() or c < " ":
            break
        else:
            lit = c
            nxt = i + 1
        if nxt < n and pattern[nxt] in "*+?{":
            break
        out.append(lit)
        i = nxt
    return "".join(out).encode("ascii")


cdef list _rt_substitution_parts(str sub, int ngroups, str path):
    """RE2's rewrite syntax (used only without the translator): \\0..\\9 insert a group,
    \\\\ is a backslash, any other backslash is an error. Parts: str or group number."""
    parts = []
    lit = []
    i = 0
    while i < len(sub):
        c = sub[i]
        if c != "\\":
            lit.append(c)
            i += 1
            continue
        nxt = sub[i + 1:i + 2]
        if nxt == "\\":
            lit.append("\\")
        elif nxt.isdigit() and nxt.isascii():
            if int(nxt) > ngroups:
                raise ConfigError(path, f"substitution refers to group \\{nxt} but the pattern "
                                        f"has {ngroups} capture group(s)")
            if lit:
                parts.append("".join(lit))
                lit = []
            parts.append(int(nxt))
        else:
            raise ConfigError(path, f"invalid escape {sub[i:i + 2]!r} in substitution "
                                    "(use \\0-\\9 for groups, \\\\ for a backslash)")
        i += 2
    if lit:
        parts.append("".join(lit))
    return parts


cdef class _MatchBuilder:
    """Builds string and header matchers (RouteStringMatch, RouteHeaderMatcher; matched on
    the workers by core/router/matchers.pxi) into memory that lives as long as the compiled
    config: the route table's arena (_RouteBuilder) or a native filter's config (_NfBuild,
    core/filters/native_build.pxi), which override alloc. Regexes
    are compiled regex_copies times and linked on *regexes for their owner to regfree."""
    cdef int regex_copies
    cdef RouteRegex** regexes
    cdef object re2_to_posix

    cdef void* alloc(self, size_t n) except NULL:
        raise NotImplementedError

    cdef int put(self, RouteStr* out, s) except -1:
        """Copy s (str/bytes; None: not set) into the arena, NUL-terminated."""
        cdef bytes b
        cdef char* p
        if s is None:
            out.p = NULL
            out.n = 0
            return 0
        b = _rt_b(s)
        p = <char*>self.alloc(len(b) + 1)
        if len(b):
            memcpy(p, <const char*>b, len(b))
        p[len(b)] = 0
        out.p = p
        out.n = len(b)
        return 0

    cdef RouteRegex* regex(self, pattern, bint full, str path) except NULL:
        """Compile an RE2 pattern for a full match: anchored, REG_NOSUB, with the literal
        prefilter. (full False: unanchored with groups, untranslated: see rewrite().)"""
        cdef RouteRegex* rx
        if not isinstance(pattern, str):
            raise ConfigError(path, "regex must be a string")
        if full:
            if self.re2_to_posix is not None:
                posix = self.re2_to_posix(pattern, path, full_match=True)
            else:
                posix = "^(" + pattern + ")$"
        else:
            posix = pattern
        rx = self.compile_ere(posix, full, path, pattern)
        if full:
            self.put(&rx.literal, _rt_literal_prefix(pattern))
            rx.literal_last = _rt_last_word(rx.literal.p, rx.literal.n)
        return rx

    cdef RouteRegex* compile_ere(self, str posix, bint nosub, str path, str shown) except NULL:
        """regcomp a POSIX ERE regex_copies times (REG_NOSUB: no groups needed): the one regex
        policy of the core, for routes and native filters alike (see the top of this file)."""
        cdef RouteRegex* rx
        cdef bytes ere
        cdef int i, rc
        cdef char err[256]
        cdef locale_t c_locale
        cdef locale_t previous
        ere = posix.encode("utf-8")
        if b"\0" in ere:
            raise ConfigError(path, "regex must not contain NUL")
        rx = <RouteRegex*>self.alloc(sizeof(RouteRegex))
        rx.ncopies = self.regex_copies
        rx.copies = <regex_t*>self.alloc(sizeof(regex_t) * rx.ncopies)
        rx.next = self.regexes[0]
        self.regexes[0] = rx            # linked first, so a failure frees what compiled
        # Compile in the C locale (this thread only): byte semantics and ASCII ranges whatever
        # LANG / LC_COLLATE say, so routing does not depend on the environment (and bytes
        # that are not UTF-8 still match '.', as in RE2); glibc's regexec also stays on its
        # single-byte path, about 3x faster than under a UTF-8 locale.
        c_locale = newlocale(LC_ALL_MASK, "C", NULL)
        if c_locale == NULL:
            raise MemoryError()
        previous = uselocale(c_locale)
        try:
            for i in range(rx.ncopies):
                rc = regcomp(&rx.copies[i], ere, REG_EXTENDED | (REG_NOSUB if nosub else 0))
                if rc != 0:
                    regerror(rc, &rx.copies[i], err, sizeof(err))
                    raise ConfigError(path, f"invalid regex {shown!r}: "
                                            f"{(<bytes>err).decode('utf-8', 'replace')}")
                rx.ncompiled += 1
        finally:
            uselocale(previous)
            freelocale(c_locale)
        rx.ngroups = <int>rx.copies[0].re_nsub
        return rx

    cdef int string_match(self, RouteStringMatch* out, sm, str path) except -1:
        kind = _RT_MATCH_KINDS.get(getattr(sm, "kind", None))
        if kind is None:
            raise ConfigError(path, f"unknown string match kind {getattr(sm, 'kind', None)!r}")
        if not isinstance(sm.value, str):
            raise ConfigError(path + "." + sm.kind, "must be a string")
        out.kind = kind
        if kind == RSM_SAFE_REGEX:
            if sm.ignore_case:          # (the model rejects it first)
                raise ConfigError(path + ".ignore_case", "ignore_case has no effect for safe_regex")
            out.regex = self.regex(sm.value, True, path + ".safe_regex.regex")
            return 0
        out.ignore_case = bool(sm.ignore_case)
        self.put(&out.value, _rt_lower(sm.value) if sm.ignore_case else sm.value)
        return 0

    cdef int header_matcher(self, RouteHeaderMatcher* m, hm, str hpath) except -1:
        if not isinstance(hm.name, str) or not hm.name:
            raise ConfigError(hpath + ".name", "must be a non-empty string")
        name = _rt_lower(hm.name)
        self.put(&m.name, name)
        m.source = _RT_PSEUDO.get(name, RHS_HEADERS)
        m.invert = bool(hm.invert_match)
        m.missing_as_empty = bool(hm.treat_missing_header_as_empty)
        rm = hm.range_match
        if sum(x is not None for x in (hm.string_match, hm.present_match, rm)) > 1:
            raise ConfigError(hpath, "only one of string_match, range_match and present_match")
        if rm is not None:
            m.is_range = 1
            m.range_start = rm.start
            m.range_end = rm.end
        elif hm.string_match is None:
            m.presence_only = 1
            m.present = True if hm.present_match is None else bool(hm.present_match)
        else:
            self.string_match(&m.sm, hm.string_match, hpath + ".string_match")
        return 0



cdef class _RouteBuilder(_MatchBuilder):
    """Builds one RouteTable; every allocation goes to the table's arena."""
    cdef RouteTable* t
    cdef object rewrite_to_posix
    cdef dict cluster_index
    cdef object cluster_ref             # None: only the names of cluster_index are known

    cdef void* alloc(self, size_t n) except NULL:
        cdef RouteArenaBlock* b = self.t.arena
        cdef size_t cap
        cdef void* p
        n = (n + 15) & ~(<size_t>15)
        if n == 0:
            n = 16
        if b == NULL or b.cap - b.used < n:
            cap = n if n > 65536 else 65536
            b = <RouteArenaBlock*>calloc(1, sizeof(RouteArenaBlock))
            if b == NULL:
                raise MemoryError()
            b.data = <char*>calloc(1, cap)
            if b.data == NULL:
                free(b)
                raise MemoryError()
            b.cap = cap
            b.next = self.t.arena
            self.t.arena = b
        p = b.data + b.used
        b.used += n
        return p

    cdef int header_matchers(self, RouteEntry* e, list hms, str path) except -1:
        cdef int i
        e.nheader_matchers = len(hms)
        if not hms:
            return 0
        e.header_matchers = <RouteHeaderMatcher*>self.alloc(sizeof(RouteHeaderMatcher) * len(hms))
        for i, hm in enumerate(hms):
            self.header_matcher(&e.header_matchers[i], hm, f"{path}[{i}]")
        return 0

    cdef int query_matchers(self, RouteEntry* e, list qms, str path) except -1:
        cdef RouteQueryMatcher* m
        cdef int i
        e.nquery_matchers = len(qms)
        if not qms:
            return 0
        e.query_matchers = <RouteQueryMatcher*>self.alloc(sizeof(RouteQueryMatcher) * len(qms))
        for i, qm in enumerate(qms):
            m = &e.query_matchers[i]
            qpath = f"{path}[{i}]"
            if not isinstance(qm.name, str) or not qm.name:
                raise ConfigError(qpath + ".name", "must be a non-empty string")
            self.put(&m.name, qm.name)
            if qm.string_match is not None and qm.present_match is not None:
                raise ConfigError(qpath, "only one of string_match and present_match")
            if qm.string_match is None:
                m.presence_only = 1     # Envoy: present_match (true or false) = present
            else:
                self.string_match(&m.sm, qm.string_match, qpath + ".string_match")
        return 0

    cdef int match(self, RouteEntry* e, mt, str path) except -1:
        kinds = [(k, getattr(mt, k)) for k in ("prefix", "path", "safe_regex",
                                                "path_separated_prefix")
                 if getattr(mt, k) is not None]
        if mt.connect_matcher:
            kinds.append(("connect_matcher", ""))
        if len(kinds) != 1:
            raise ConfigError(path, "exactly one of prefix, path, safe_regex, "
                                    "path_separated_prefix must be set")
        kind, value = kinds[0]
        if not isinstance(value, str):
            raise ConfigError(f"{path}.{kind}", "must be a string")
        e.case_sensitive = bool(mt.case_sensitive)
        if kind == "connect_matcher":
            e.match_kind = RM_CONNECT
        elif kind == "safe_regex":
            e.match_kind = RM_SAFE_REGEX
            e.match_regex = self.regex(value, True, path + ".safe_regex.regex")
        else:
            if kind == "prefix":
                e.match_kind = RM_NEVER if ("?" in value or "#" in value) else RM_PREFIX
            elif kind == "path":
                e.match_kind = RM_PATH
            else:
                if value.endswith("/") or "?" in value or "#" in value:
                    raise ConfigError(path + ".path_separated_prefix",
                                      "must not end with '/' nor contain '?' or '#'")
                e.match_kind = RM_PATH_SEPARATED_PREFIX
            self.put(&e.match_value, value if e.case_sensitive else _rt_lower(value))
            e.match_last = _rt_last_word(e.match_value.p, e.match_value.n)
        self.header_matchers(e, list(mt.headers), path + ".headers")
        self.query_matchers(e, list(mt.query_parameters), path + ".query_parameters")
        e.plain = (e.match_kind != RM_SAFE_REGEX and e.match_kind != RM_CONNECT and e.nheader_matchers == 0
                   and e.nquery_matchers == 0)
        return 0

    cdef int cluster(self, str name, str path) except -1:
        if self.cluster_ref is not None and isinstance(name, str) and name:
            # Every name is taken (RDS: a cluster may come later); indexes in order of use.
            return <int>self.cluster_index.setdefault(name, len(self.cluster_index))
        if not isinstance(name, str) or name not in self.cluster_index:
            raise ConfigError(path, f"unknown cluster {name!r}")
        return <int>self.cluster_index[name]

    cdef int resolve_clusters(self, list names) except -1:
        """The table's clusters (cluster_ref(name): a ClusterHandle, or None: no such
        cluster, 503 NC) and their names, by index."""
        cdef RouteTable* t = self.t
        cdef ClusterHandle ch
        cdef int i
        cdef ClusterCfg** clusters = <ClusterCfg**>calloc(max(1, len(names)), sizeof(ClusterCfg*))
        cdef char** cnames = <char**>calloc(max(1, len(names)), sizeof(char*))
        if clusters == NULL or cnames == NULL:
            free(clusters)
            free(cnames)
            raise MemoryError()
        t.clusters = clusters           # the table frees them (and what they hold) from here
        t.cluster_names = cnames
        t.nclusters = len(names)
        for i, name in enumerate(names):
            cnames[i] = _al_dup(name.encode())
            if cnames[i] == NULL:
                raise MemoryError()
            ref = self.cluster_ref(name) if self.cluster_ref is not None else None
            if ref is not None:
                if not isinstance(ref, ClusterHandle):
                    raise TypeError(f"cluster_ref({name!r}) must return a ClusterHandle or None, "
                                    f"got {type(ref).__name__}")
                ch = <ClusterHandle>ref
                clusters[i] = ch.c
                fp_atomic_add_int(&ch.c.refcnt, 1)
        return 0

    cdef int rewrite(self, RouteRewrite* rw, rr, str path) except -1:
        """A regex_rewrite (path: where it is): the unanchored pattern and its substitution
        as parts (literal text or POSIX group numbers). The translator maps RE2 groups to
        POSIX ones (its (?:...) groups become groups too); without it the pattern is used as
        is."""
        cdef int i
        ppath = path + ".regex_rewrite.pattern.regex"
        spath = path + ".regex_rewrite.substitution"
        if not isinstance(rr.pattern, str):
            raise ConfigError(ppath, "regex must be a string")
        if not isinstance(rr.substitution, str):
            raise ConfigError(spath, "must be a string")
        if self.rewrite_to_posix is not None:
            posix, parts = self.rewrite_to_posix(rr.pattern, rr.substitution, ppath, spath)
            rw.regex = self.compile_ere(posix, False, ppath, rr.pattern)
        else:
            rw.regex = self.compile_ere(rr.pattern, False, ppath, rr.pattern)
            parts = _rt_substitution_parts(rr.substitution, rw.regex.ngroups, spath)
        groups = [p for p in parts if isinstance(p, int)]
        rw.nmatch = max(groups) + 1 if groups else 1
        if rw.nmatch > RT_MAX_MATCH or rw.nmatch > rw.regex.ngroups + 1:
            raise ConfigError(spath, f"the substitution needs group {rw.nmatch - 1}; "
                                     f"at most {min(RT_MAX_MATCH - 1, rw.regex.ngroups)}")
        rw.nparts = len(parts)
        rw.parts = <RouteRewritePart*>self.alloc(sizeof(RouteRewritePart) * max(1, len(parts)))
        for i, part in enumerate(parts):
            if isinstance(part, int):
                rw.parts[i].group = part
            else:
                rw.parts[i].group = -1
                self.put(&rw.parts[i].text, part)
        return 0

    cdef int grpc_timeouts(self, RouteEntry* e, a, str apath) except -1:
        """RouteAction.max_grpc_timeout / grpc_timeout_offset and max_stream_duration (its
        presence, even empty, is Envoy's usingNewTimeouts: the route timeout then is not
        used); seconds in the model, milliseconds here."""
        msd = getattr(a, "max_stream_duration", None)
        if msd is not None:
            e.grpc_timeouts = RG_STREAM
            e.max_stream_duration_ms = _rt_ms(msd.max_stream_duration,
                                              apath + ".max_stream_duration.max_stream_duration")
            e.grpc_header_max_set = msd.grpc_timeout_header_max is not None
            e.grpc_header_max_ms = _rt_ms(msd.grpc_timeout_header_max,
                                          apath + ".max_stream_duration.grpc_timeout_header_max")
            e.grpc_header_offset_ms = _rt_ms(msd.grpc_timeout_header_offset,
                                             apath + ".max_stream_duration.grpc_timeout_header_offset")
        elif getattr(a, "max_grpc_timeout", None) is not None:
            e.grpc_timeouts = RG_LEGACY
            e.max_grpc_timeout_ms = _rt_ms(a.max_grpc_timeout, apath + ".max_grpc_timeout")
            e.grpc_timeout_offset_ms = _rt_ms(a.grpc_timeout_offset, apath + ".grpc_timeout_offset")
        return 0

    cdef int action(self, RouteEntry* e, route, str path, vhm=None) except -1:
        cdef uint64_t total = 0
        cdef int i
        chosen = [k for k in ("route", "redirect", "direct_response")
                  if getattr(route, k) is not None]
        if len(chosen) != 1:
            raise ConfigError(path, "exactly one of route, redirect, direct_response must be set")
        if route.route is not None:
            a = route.route
            apath = path + ".route"
            if (a.cluster is not None) == bool(a.weighted_clusters):
                raise ConfigError(apath, "exactly one of cluster, weighted_clusters must be set")
            if a.cluster is not None:
                e.action = ROUTE_CLUSTER
                e.cluster = self.cluster(a.cluster, apath + ".cluster")
            else:
                e.action = ROUTE_WEIGHTED_CLUSTERS
                e.cluster = -1
                e.nweighted = len(a.weighted_clusters)
                e.weighted = <RouteWeightedCluster*>self.alloc(
                    sizeof(RouteWeightedCluster) * e.nweighted)
                for i, wc in enumerate(a.weighted_clusters):
                    wpath = f"{apath}.weighted_clusters.clusters[{i}]"
                    e.weighted[i].cluster = self.cluster(wc.name, wpath + ".name")
                    if not isinstance(wc.weight, int) or wc.weight < 0 or wc.weight > 0xffffffff:
                        raise ConfigError(wpath + ".weight", "must be an integer in [0, 2^32)")
                    total += <uint64_t>wc.weight
                    e.weighted[i].weight = <uint32_t>wc.weight
                    e.weighted[i].cumulative = total
                if total == 0:
                    raise ConfigError(apath + ".weighted_clusters",
                                      "the sum of the weights must be greater than 0")
                e.total_weight = total
            if a.timeout is not None:
                if a.timeout < 0:
                    raise ConfigError(apath + ".timeout", "must not be negative")
                e.timeout_ms = <uint64_t>round(a.timeout * 1000.0)
            self.grpc_timeouts(e, a, apath)
            if a.prefix_rewrite and a.regex_rewrite is not None:
                raise ConfigError(apath, "only one of prefix_rewrite, regex_rewrite")
            if a.prefix_rewrite:        # "" is no rewrite (Envoy)
                self.put(&e.prefix_rewrite, a.prefix_rewrite)
            if a.regex_rewrite is not None:
                self.rewrite(&e.rewrite, a.regex_rewrite, apath)
            if a.host_rewrite_literal is not None and a.auto_host_rewrite:
                raise ConfigError(apath, "only one of host_rewrite_literal, auto_host_rewrite")
            if a.host_rewrite_literal:
                self.put(&e.host_rewrite_literal, a.host_rewrite_literal)
            e.auto_host_rewrite = bool(a.auto_host_rewrite)
            # The cluster manager's policies, each built by its own file.
            route_retry_build(self, e, a, apath, vhm)
            route_hash_policy_build(self, e, a, apath)
            route_mirrors_build(self, e, a, apath)
        elif route.redirect is not None:
            rd = route.redirect
            rpath = path + ".redirect"
            e.action = ROUTE_REDIRECT
            e.cluster = -1
            if rd.scheme_redirect and rd.https_redirect:
                raise ConfigError(rpath, "only one of scheme_redirect, https_redirect")
            if rd.path_redirect and rd.prefix_rewrite:
                raise ConfigError(rpath, "only one of path_redirect, prefix_rewrite")
            if rd.response_code not in _RT_REDIRECT_CODES:
                raise ConfigError(rpath + ".response_code",
                                  f"must be one of {', '.join(map(str, _RT_REDIRECT_CODES))}")
            e.status = rd.response_code
            if rd.scheme_redirect:
                self.put(&e.scheme_redirect, rd.scheme_redirect)
            e.https_redirect = bool(rd.https_redirect)
            if rd.host_redirect:
                self.put(&e.host_redirect, rd.host_redirect)
            if rd.port_redirect:
                if not isinstance(rd.port_redirect, int) or not 0 < rd.port_redirect < 65536:
                    raise ConfigError(rpath + ".port_redirect", "must be a port number")
                self.put(&e.port_redirect, f":{rd.port_redirect}")
            if rd.path_redirect:
                self.put(&e.path_redirect, rd.path_redirect)
                e.path_redirect_has_query = "?" in rd.path_redirect
            if rd.prefix_rewrite:
                self.put(&e.prefix_rewrite, rd.prefix_rewrite)
            rr = rd.regex_rewrite
            if rr is not None:
                if rd.path_redirect or rd.prefix_rewrite:
                    raise ConfigError(rpath, "only one of path_redirect, prefix_rewrite, regex_rewrite")
                self.rewrite(&e.rewrite, rr, rpath)
            e.strip_query = bool(rd.strip_query)
        else:
            dr = route.direct_response
            e.action = ROUTE_DIRECT_RESPONSE
            e.cluster = -1
            if not isinstance(dr.status, int) or not 200 <= dr.status < 600:
                raise ConfigError(path + ".direct_response.status", "must be in [200, 600)")
            e.status = dr.status
            self.put(&e.body, dr.body if dr.body is not None else b"")
        return 0

    cdef int ops(self, RouteHeaderOps* out, list levels) except -1:
        """levels: [(level, [(action, name, value)])] in application order."""
        cdef int n = sum(len(ops) for _, ops in levels)
        cdef int i = 0
        cdef RouteHeaderOp* op
        out.n = n
        if n == 0:
            out.ops = NULL
            return 0
        out.ops = <RouteHeaderOp*>self.alloc(sizeof(RouteHeaderOp) * n)
        for level, ops in levels:
            for action, name, value in ops:
                op = &out.ops[i]
                op.action = action
                op.level = level
                self.put(&op.name, name)
                self.put(&op.value, value)
                op.formatted = value is not None and "%" in value
                i += 1
        return 0


cdef list _rt_level_ops(hm, str path, str which):
    """One level's ops for request or response: removes first, then adds in order."""
    out = []
    if hm is None:
        return out
    removes = getattr(hm, which + "_headers_to_remove")
    adds = getattr(hm, which + "_headers_to_add")
    for i, name in enumerate(removes):
        p = f"{path}.{which}_headers_to_remove[{i}]"
        if not isinstance(name, str) or not name:
            raise ConfigError(p, "must be a non-empty string")
        low = _rt_lower(name)
        if low.startswith(":") or low == "host":
            raise ConfigError(p, ":-prefixed or host headers may not be removed")
        out.append((RHO_REMOVE, low, None))
    for i, hv in enumerate(adds):
        p = f"{path}.{which}_headers_to_add[{i}]"
        if not isinstance(hv.key, str) or not hv.key:
            raise ConfigError(p + ".header.key", "must be a non-empty string")
        low = _rt_lower(hv.key)
        if low.startswith(":") or low == "host":
            raise ConfigError(p + ".header.key", ":-prefixed or host headers may not be modified")
        action = _RT_APPEND_ACTIONS.get(hv.append_action)
        if action is None:
            raise ConfigError(p + ".append_action", f"unknown append_action {hv.append_action!r}")
        if not isinstance(hv.value, str):
            raise ConfigError(p + ".header.value", "must be a string")
        if hv.value == "" and not hv.keep_empty_value:
            continue                    # keep_empty_value false: Envoy skips empty values
        out.append((action, low, hv.value))
    return out


cdef RouteRunIndex* _rt_build_run(_RouteBuilder b, RouteVhost* vh, int start,
                                  int count) except NULL:
    cdef RouteRunIndex* x = <RouteRunIndex*>b.alloc(sizeof(RouteRunIndex))
    cdef RouteEntry* e
    cdef RouteRunSlot* s
    cdef uint64_t h
    cdef uint32_t j, size
    cdef int pos, i
    keys = {}                           # (ci, bytes) -> [ptr-owner pos, prefix, separated, path]
    lens = set()
    max_path = 0
    limit = 0
    for pos in range(start, start + count):
        e = &vh.routes[pos]
        if e.match_kind == RM_NEVER:
            continue
        kb = e.match_value.p[:e.match_value.n]
        key = (0 if e.case_sensitive else 1, kb)
        slot = keys.get(key)
        if slot is None:
            slot = keys[key] = [pos, -1, -1, -1]
        if e.match_kind == RM_PREFIX:
            k = 1
        elif e.match_kind == RM_PATH_SEPARATED_PREFIX:
            k = 2
        else:
            k = 3
        if slot[k] < 0:
            slot[k] = pos
        if k == 3:
            x.has_path = 1
            max_path = max(max_path, len(kb))
        else:
            lens.add(len(kb))
        limit = max(limit, len(kb))
        if key[0]:
            x.has_ci = 1
        else:
            x.has_cs = 1
    size = 8
    while size < 2 * len(keys):
        size *= 2
    x.mask = size - 1
    x.slots = <RouteRunSlot*>b.alloc(sizeof(RouteRunSlot) * size)
    for (ci, kb), (owner, pre, sep, pth) in keys.items():
        e = &vh.routes[<int>owner]
        h = _rt_hash(e.match_value.p, e.match_value.n, False)   # ci keys are lowercase already
        j = <uint32_t>h & x.mask
        while x.slots[j].used:
            j = (j + 1) & x.mask
        s = &x.slots[j]
        s.used = 1
        s.hash = h
        s.key = e.match_value.p
        s.len = <uint32_t>e.match_value.n
        s.ci = ci
        s.prefix_route = pre
        s.separated_route = sep
        s.path_route = pth
    sl = sorted(lens)
    x.nlens = len(sl)
    x.lens = <uint32_t*>b.alloc(sizeof(uint32_t) * max(1, len(sl)))
    for i, L in enumerate(sl):
        x.lens[i] = L
    x.max_path_len = max_path
    x.limit = limit
    x.first = start
    return x


cdef int _rt_build_segments(_RouteBuilder b, RouteVhost* vh) except -1:
    cdef int i = 0, j, k
    cdef int n = vh.nroutes
    cdef RouteSegment* seg
    cdef RouteScan* sc
    cdef RouteEntry* e
    segs = []                           # [start, count, indexed]
    while i < n:
        if vh.routes[i].plain:
            j = i
            while j < n and vh.routes[j].plain:
                j += 1
            if j - i >= RT_INDEX_MIN_RUN:
                segs.append([i, j - i, True])
            elif segs and not segs[len(segs) - 1][2]:
                segs[len(segs) - 1][1] += j - i
            else:
                segs.append([i, j - i, False])
            i = j
        else:
            if segs and not segs[len(segs) - 1][2]:
                segs[len(segs) - 1][1] += 1
            else:
                segs.append([i, 1, False])
            i += 1
    vh.nsegments = len(segs)
    vh.segments = <RouteSegment*>b.alloc(sizeof(RouteSegment) * max(1, len(segs)))
    for i, (start, count, indexed) in enumerate(segs):
        seg = &vh.segments[i]
        seg.start = start
        seg.count = count
        if indexed:
            seg.index = _rt_build_run(b, vh, start, count)
            continue
        seg.scan = <RouteScan*>b.alloc(sizeof(RouteScan) * count)
        for k in range(count):
            e = &vh.routes[start + k]
            sc = &seg.scan[k]
            sc.last = e.match_last
            sc.key = e.match_value.p
            sc.len = <uint32_t>e.match_value.n
            sc.kind = <uint8_t>e.match_kind
            sc.fold = not e.case_sensitive
            sc.more = not e.plain
            sc.pos = start + k
    return 0


cdef int _rt_build_map(_RouteBuilder b, RouteDomainMap* m, dict keys) except -1:
    """keys: {lowercase bytes: vhost index}."""
    cdef uint32_t size = 8, j
    cdef uint64_t h
    cdef RouteStr s
    cdef int i
    if not keys:
        m.slots = NULL
        m.mask = 0
        return 0
    while size < 2 * len(keys):
        size *= 2
    m.mask = size - 1
    m.slots = <RouteDomainSlot*>b.alloc(sizeof(RouteDomainSlot) * size)
    for i in range(<int>size):
        m.slots[i].vhost = -1
    for kb, v in keys.items():
        b.put(&s, kb)
        h = _rt_hash(s.p, s.n, True)
        j = <uint32_t>h & m.mask
        while m.slots[j].vhost >= 0:
            j = (j + 1) & m.mask
        m.slots[j].hash = h
        m.slots[j].key = s.p
        m.slots[j].len = <uint32_t>s.n
        m.slots[j].vhost = v
    return 0


cdef int _rt_build_domainset(_RouteBuilder b, RouteDomainSet* ds, dict exact, dict suffix,
                             dict prefix) except -1:
    """suffix / prefix: {length: {key bytes: vhost}}."""
    cdef int i
    _rt_build_map(b, &ds.exact, exact)
    ds.nsuffix = len(suffix)
    ds.suffix = <RouteWildcardGroup*>b.alloc(sizeof(RouteWildcardGroup) * max(1, len(suffix)))
    for i, L in enumerate(sorted(suffix, reverse=True)):
        ds.suffix[i].len = L
        _rt_build_map(b, &ds.suffix[i].map, suffix[L])
    ds.nprefix = len(prefix)
    ds.prefix = <RouteWildcardGroup*>b.alloc(sizeof(RouteWildcardGroup) * max(1, len(prefix)))
    for i, L in enumerate(sorted(prefix, reverse=True)):
        ds.prefix[i].len = L
        _rt_build_map(b, &ds.prefix[i].map, prefix[L])
    return 0


cdef class RouteTableHandle:
    """The main thread's reference to a compiled route table (see core/router/decls.pxi)."""
    cdef RouteTable* t
    cdef readonly list cluster_names        # cluster index -> name
    cdef readonly str name

    def __dealloc__(self):
        route_table_decref(self.t)
        self.t = NULL

    def share(self):
        """Another handle on the same table (takes a reference): what a snapshot does."""
        cdef RouteTableHandle h = RouteTableHandle.__new__(RouteTableHandle)
        route_table_incref(self.t)
        h.t = self.t
        h.cluster_names = self.cluster_names
        h.name = self.name
        return h

    @property
    def refcnt(self):
        return fp_load_int(&self.t.refcnt)

    @property
    def virtual_hosts(self):
        return [_rt_pystr(self.t.vhosts[i].name) for i in range(self.t.nvhosts)]

    def find_virtual_host(self, host):
        """The name of the virtual host chosen for this Host value (None: no Host)."""
        cdef bytes hb
        cdef int v
        if host is None:
            v = route_find_vhost(self.t, NULL, 0)
        else:
            hb = _rt_b(host)
            v = route_find_vhost(self.t, hb, len(hb))
        return None if v < 0 else _rt_pystr(self.t.vhosts[v].name)

    def segments(self, vhost_index=0):
        """How a virtual host's routes are scanned: [(start, count, indexed)] (for tests)."""
        cdef RouteVhost* vh
        if not 0 <= vhost_index < self.t.nvhosts:
            raise IndexError("no such virtual host")
        vh = &self.t.vhosts[<int>vhost_index]
        return [(vh.segments[i].start, vh.segments[i].count, vh.segments[i].index != NULL)
                for i in range(vh.nsegments)]

    cdef RouteHeader* _fill(self, RouteInput* r, list keep, method, path, host, headers,
                            scheme) except? NULL:
        cdef RouteHeader* hs = NULL
        cdef bytes b
        cdef int i
        memset(r, 0, sizeof(RouteInput))
        b = _rt_b(method)
        keep.append(b)
        r.method = b
        r.method_len = len(b)
        r.connect = b == b"CONNECT"
        b = _rt_b(path)
        keep.append(b)
        r.path = b
        r.path_len = len(b)
        if host is not None:
            b = _rt_b(host)
            keep.append(b)
            r.host = b
            r.host_len = len(b)
        b = _rt_b(scheme)
        keep.append(b)
        r.scheme = b
        r.scheme_len = len(b)
        items = [(_rt_b(k), _rt_b(v)) for k, v in headers]
        if items:
            hs = <RouteHeader*>calloc(len(items), sizeof(RouteHeader))
            if hs == NULL:
                raise MemoryError()
            for i, (k, v) in enumerate(items):
                keep.append(k)
                keep.append(v)
                hs[i].name = k
                hs[i].name_len = len(k)
                hs[i].value = v
                hs[i].value_len = len(v)
        r.nheaders = len(items)
        r.headers = hs
        return hs

    def select(self, method, path, host, headers=(), scheme="http", random=0, worker=0):
        """Route one request the way a worker does; None means 404. A dict describing the
        chosen entry otherwise (the cluster of a weighted route is picked with `random`)."""
        cdef RouteInput r
        cdef list keep = []
        cdef RouteHeader* hs = self._fill(&r, keep, method, path, host, headers, scheme)
        cdef const RouteEntry* e
        try:
            r.worker = <unsigned int>worker
            e = route_select(self.t, &r)
            if e == NULL:
                return None
            out = {
                "route": _rt_pystr(e.name),
                "vhost": _rt_pystr(e.vhost_name),
                "index": e.index,
                "action": {ROUTE_CLUSTER: "cluster", ROUTE_WEIGHTED_CLUSTERS: "weighted_clusters",
                           ROUTE_REDIRECT: "redirect",
                           ROUTE_DIRECT_RESPONSE: "direct_response"}[e.action],
                "cluster": None,
                "weighted_clusters": None,
                "timeout_ms": e.timeout_ms,
                "grpc_timeouts": _rt_grpc_timeouts(e),
                "host_rewrite_literal": _rt_pystr(e.host_rewrite_literal),
                "auto_host_rewrite": bool(e.auto_host_rewrite),
                "path": None,
                "location": None,
                "status": None,
                "body": None,
                "request_header_ops": _rt_ops_list(&e.request_headers),
                "response_header_ops": _rt_ops_list(&e.response_headers),
            }
            k = route_pick_weighted(e, <uint64_t>random)
            if k >= 0:
                out["cluster"] = self.cluster_names[k]
            if e.action == ROUTE_WEIGHTED_CLUSTERS:
                out["weighted_clusters"] = [(self.cluster_names[e.weighted[i].cluster],
                                             e.weighted[i].weight) for i in range(e.nweighted)]
            if e.action == ROUTE_REDIRECT or e.action == ROUTE_DIRECT_RESPONSE:
                out["status"] = e.status
            if e.action == ROUTE_DIRECT_RESPONSE:
                out["body"] = _rt_pybytes(e.body)
            out["path"] = _rt_text(route_rewrite_path, e, &r)
            out["location"] = _rt_text(route_redirect_location, e, &r)
            return out
        finally:
            free(hs)

    def _bench_select(self, method, path, host, headers=(), scheme="http", long rounds=100000):
        """route_select `rounds` times without the GIL. Returns (ns per call, matched)."""
        cdef RouteInput r
        cdef list keep = []
        cdef RouteHeader* hs = self._fill(&r, keep, method, path, host, headers, scheme)
        cdef timespec t0, t1
        cdef long i, hits = 0
        cdef const RouteTable* t = self.t
        try:
            with nogil:
                clock_gettime(CLOCK_MONOTONIC, &t0)
                for i in range(rounds):
                    r.worker = <unsigned int>i
                    if route_select(t, &r) != NULL:
                        hits += 1
                clock_gettime(CLOCK_MONOTONIC, &t1)
            ns = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / max(1, rounds)
            return ns, hits == rounds
        finally:
            free(hs)


cdef object _rt_text(RouteTextFn fn, const RouteEntry* e, const RouteInput* r):
    """What fn writes for this request (None: nothing), through the workers' route_text
    (match.pxi) from 16 bytes of room, so its retry with the room fn asks for is exercised
    by every test that inspects a route."""
    cdef char small[16]
    cdef char* text
    cdef ssize_t n = route_text(fn, e, r, small, sizeof(small), &text)
    if n == ROUTE_NO_ROOM:
        raise MemoryError("route_text: no room for the text (or less room asked for than it needs)")
    try:
        return text[:n].decode("utf-8", "surrogateescape") if n >= 0 else None
    finally:
        if text != small:
            free(text)


cdef list _rt_ops_list(const RouteHeaderOps* ops):
    cdef int i
    return [(_RT_LEVEL_NAMES[ops.ops[i].level], _RT_ACTION_NAMES[ops.ops[i].action],
             _rt_pystr(ops.ops[i].name), _rt_pystr(ops.ops[i].value)) for i in range(ops.n)]


def compile_route_table(route_config, dict cluster_index, int regex_copies=1,
                        str path="route_config", per_filter=None, cluster_ref=None):
    """Compile a fastproxy.http.RouteConfiguration into a RouteTable (see core/router/decls.pxi).
    cluster_index maps every cluster name a route may use to the caller's integer index;
    with cluster_ref instead (cluster_index empty), the table takes every name and holds a
    reference to cluster_ref(name), a ClusterHandle (None: no such cluster: its requests
    get 503 NC). per_filter(route, vhost, route_config): the route's per-HTTP-filter config
    addresses (a list, 0 for none) or None."""
    cdef RouteTableHandle h = RouteTableHandle.__new__(RouteTableHandle)
    cdef _RouteBuilder b = _RouteBuilder.__new__(_RouteBuilder)
    cdef RouteTable* t = <RouteTable*>calloc(1, sizeof(RouteTable))
    cdef RouteVhost* vh
    cdef RouteEntry* e
    cdef int vi, ri, nroutes
    if t == NULL:
        raise MemoryError()
    t.refcnt = 1
    t.default_vhost = -1
    t.regex_copies = max(1, regex_copies)
    h.t = t                             # from here on the handle frees it on failure
    h.name = route_config.name or ""
    for cname, ci in cluster_index.items():
        if not isinstance(ci, int) or ci < 0:
            raise ValueError(f"cluster_index[{cname!r}] must be a non-negative int")
    names = [None] * (max(cluster_index.values()) + 1 if cluster_index else 0)
    for cname, ci in cluster_index.items():
        names[ci] = cname
    h.cluster_names = names
    b.t = t
    b.regex_copies = t.regex_copies
    b.regexes = &t.regexes
    if cluster_ref is not None and cluster_index:
        raise ValueError("compile_route_table takes cluster_index or cluster_ref, not both")
    b.cluster_index = dict(cluster_index)
    b.cluster_ref = cluster_ref
    try:
        from fastproxy.config.regex import re2_to_posix, rewrite_to_posix
        b.re2_to_posix = re2_to_posix
        b.rewrite_to_posix = rewrite_to_posix
    except ImportError:                 # no translator: patterns are taken as POSIX EREs
        b.re2_to_posix = None
        b.rewrite_to_posix = None

    most_specific = bool(getattr(route_config, "most_specific_header_mutations_wins", False))
    rc_req = _rt_level_ops(route_config.headers, path, "request")
    rc_resp = _rt_level_ops(route_config.headers, path, "response")

    vhosts = list(route_config.virtual_hosts)
    t.nvhosts = len(vhosts)
    t.vhosts = <RouteVhost*>b.alloc(sizeof(RouteVhost) * max(1, len(vhosts)))
    seen = {}
    exact, suffix, prefix = {}, {}, {}
    t.ignore_port = bool(route_config.ignore_port_in_host_matching)
    for vi, vhm in enumerate(vhosts):
        vpath = f"{path}.virtual_hosts[{vi}]"
        vh = &t.vhosts[vi]
        b.put(&vh.name, vhm.name)
        if not vhm.domains:
            raise ConfigError(vpath + ".domains", "must have at least one domain")
        for di, d in enumerate(vhm.domains):
            dpath = f"{vpath}.domains[{di}]"
            if not isinstance(d, str) or not d:
                raise ConfigError(dpath, "must be a non-empty string")
            dom = _rt_lower(d)
            if dom in seen:
                raise ConfigError(dpath, f"only unique values for domains are permitted: "
                                         f"{d!r} is also in virtual host {seen[dom]!r}")
            seen[dom] = vhm.name
            if dom == "*":
                t.default_vhost = vi
                continue
            if dom.startswith("*"):
                key = dom[1:].encode("utf-8")
                suffix.setdefault(len(key), {})[key] = vi
            elif dom.endswith("*"):
                key = dom[:len(dom) - 1].encode("utf-8")
                prefix.setdefault(len(key), {})[key] = vi
            else:
                exact[dom.encode("utf-8")] = vi
        vh_req = _rt_level_ops(vhm.headers, vpath, "request")
        vh_resp = _rt_level_ops(vhm.headers, vpath, "response")
        routes = list(vhm.routes)
        nroutes = len(routes)
        vh.nroutes = nroutes
        vh.routes = <RouteEntry*>b.alloc(sizeof(RouteEntry) * max(1, nroutes))
        for ri, route in enumerate(routes):
            rpath = f"{vpath}.routes[{ri}]"
            e = &vh.routes[ri]
            e.vhost = vi
            e.index = ri
            e.vhost_name = vh.name
            b.put(&e.name, route.name or "")
            b.match(e, route.match, rpath + ".match")
            b.action(e, route, rpath, vhm)
            if per_filter is not None:
                pf = per_filter(route, vhm, route_config)
                if pf is not None:
                    e.per_filter = <void**>b.alloc(sizeof(void*) * max(1, len(pf)))
                    for k, addr in enumerate(pf):
                        e.per_filter[k] = <void*><size_t>addr
            r_req = _rt_level_ops(route.headers, rpath, "request")
            r_resp = _rt_level_ops(route.headers, rpath, "response")
            req_levels = [(RHL_ROUTE, r_req), (RHL_VIRTUAL_HOST, vh_req),
                          (RHL_ROUTE_CONFIGURATION, rc_req)]
            resp_levels = [(RHL_ROUTE, r_resp), (RHL_VIRTUAL_HOST, vh_resp),
                           (RHL_ROUTE_CONFIGURATION, rc_resp)]
            if most_specific:
                req_levels.reverse()
                resp_levels.reverse()
            b.ops(&e.request_headers, req_levels)
            b.ops(&e.response_headers, resp_levels)
        _rt_build_segments(b, vh)
    _rt_build_domainset(b, &t.domains, exact, suffix, prefix)
    t.only_default = t.default_vhost >= 0 and not (exact or suffix or prefix)
    if cluster_ref is not None:
        names = [None] * len(b.cluster_index)
        for cname, ci in b.cluster_index.items():
            names[ci] = cname
        h.cluster_names = names
    b.resolve_clusters([n if n is not None else "" for n in h.cluster_names])
    return h


cdef class RouteProviderHandle:
    """The main thread's reference to a RouteProvider: a connection manager's routes, per
    worker (see core/router/decls.pxi). Made by make_route_provider."""
    cdef RouteProvider* p
    cdef Engine engine
    cdef readonly RouteTableHandle table        # the table last set (what new streams get)

    def __dealloc__(self):
        route_provider_decref(self.p)
        self.p = NULL

    def set(self, RouteTableHandle table not None):
        """Make `table` the routes of every worker: each swaps it in by a message and drops
        its old table (streams that took it keep it to their end). Returns at once."""
        cdef RouteTableSwap* m
        cdef int i
        for i in range(self.p.nworkers):
            m = <RouteTableSwap*>malloc(sizeof(RouteTableSwap))
            if m == NULL:
                raise MemoryError()
            route_table_incref(table.t)
            fp_atomic_add_int(&self.p.refcnt, 1)
            m.provider = self.p
            m.table = table.t
            if self.engine.post(i, _msg_route_table_swap, m) < 0:
                route_table_decref(m.table)     # that worker keeps its table
                route_provider_decref(m.provider)
                free(m)
                raise MemoryError()
        self.table = table

    @property
    def refcnt(self):
        return fp_load_int(&self.p.refcnt)


def make_route_provider(Engine engine, RouteTableHandle table not None):
    """A RouteProvider whose every worker starts with `table`."""
    cdef RouteProviderHandle ph = RouteProviderHandle.__new__(RouteProviderHandle)
    cdef RouteProvider* p = <RouteProvider*>calloc(1, sizeof(RouteProvider))
    cdef int i
    if p == NULL:
        raise MemoryError()
    p.slots = <RouteTable**>calloc(max(1, engine.nworkers), sizeof(RouteTable*))
    if p.slots == NULL:
        free(p)
        raise MemoryError()
    p.refcnt = 1
    p.nworkers = engine.nworkers
    for i in range(p.nworkers):
        route_table_incref(table.t)
        p.slots[i] = table.t
    ph.p = p
    ph.engine = engine
    ph.table = table
    return ph
