# The compiled router: Envoy's route table (envoy.filters.http.router with an inline
# route_config) as immutable C structs, built once on the main thread and read by every
# worker without the GIL.
#
# Building and lifetime
# ---------------------
#   h = compile_route_table(route_config, cluster_index, regex_copies=1, path="route_config")
# runs on the main thread with the GIL: it validates the model_http.RouteConfiguration
# (ConfigError names the field), turns cluster names into the caller's integer indexes
# (cluster_index: {name: index}; the connection manager maps them to ClusterCfgs), compiles
# every regex, and lays everything out in one RouteTable. All strings and arrays of a table
# live in an arena of a few large blocks, so freeing a table is: regfree each regex, free the
# blocks. h (RouteTableHandle) owns one reference (h.t); a snapshot or a stream that outlives
# it takes its own with route_table_incref(t) and drops it with route_table_decref(t) (both
# noexcept nogil, atomic), exactly like ListenerCfg.
#
# Per request (worker, no GIL, no allocation: the caller gives the output buffers)
# ---------------------------------------------------------------------------------
#   RouteInput r            filled by the connection manager, pointers into its head block:
#     method, path (origin-form as received, query included), host (:authority / Host, may
#     carry a port; NULL = no Host), scheme ("http"/"https" of the downstream connection),
#     headers[nheaders] (names as received; compared case-insensitively), worker (the
#     worker's index: selects this worker's copy of each regex, see "Regexes" below).
#   e = route_select(t, &r)            the RouteEntry, or NULL: answer 404 (no virtual host
#                                      or no route matched)
#   e.action                           ROUTE_CLUSTER: e.cluster
#                                      ROUTE_WEIGHTED_CLUSTERS: route_pick_weighted(e, random)
#                                      ROUTE_REDIRECT: e.status + route_redirect_location()
#                                      ROUTE_DIRECT_RESPONSE: e.status, e.body
#   e.timeout_ms (0 = none), e.host_rewrite_literal (p == NULL: none), e.auto_host_rewrite
#   route_rewrite_path(e, &r, out, cap, &need)       the :path to send upstream; -1: no rewrite
#   route_redirect_location(e, &r, out, cap, &need)  the Location value; -1: the entry has none
#       both return the length written, or -2 when cap is too small (nothing useful written;
#       need, unless NULL, is then set to a capacity that holds the text: call again with
#       that much room, as core/http_conn.pxi's route_text does for long paths)
#   e.request_headers / e.response_headers   header mutations (RouteHeaderOps), see below
#   The same RouteInput must be passed to the rewrite/redirect functions as to route_select.
#
# Virtual host selection (Envoy's RouteMatcher::findVirtualHost)
# --------------------------------------------------------------
# Domains are lowercased at build time and the host is compared case-insensitively, port
# included, as Envoy does by default: "a.com" does not take "a.com:8080" (list "a.com:8080"
# too, or use "*"), and "*.a.com" does not take "x.a.com:80" (checked against Envoy 1.40).
# With the route configuration's ignore_port_in_host_matching the port is stripped from the
# host first: it starts at the last ':' unless a ']' follows it ("[::1]:8080" -> "[::1]";
# "[::1]" has no port); an unbracketed host with several ':' (a bare IPv6 literal, invalid in
# Host) is taken as having no port; then a domain naming a port never matches. The order
# is Envoy's: exact domain (hash lookup), then the longest suffix wildcard ("*.foo.com",
# "*-bar.foo.com"; the '*' must cover at least one character), then the longest prefix
# wildcard ("foo.*"), then the single "*" vhost. Wildcards are grouped by length, one hash
# map per length, so a lookup costs one hash probe per distinct wildcard length. A domain
# used twice, or two "*", is a ConfigError (Envoy refuses both). With only a "*" vhost every
# request (even without Host) selects it; otherwise no Host means no route.
#
# Route matching (first route in order whose match holds)
# -------------------------------------------------------
#   prefix                 the path without query/fragment starts with it (case_sensitive
#                          false: ASCII case folding). A prefix containing '?' or '#' can
#                          never match (modern Envoy strips the query first) and is kept as
#                          a never-matching route.
#   path                   the path without query/fragment equals it.
#   path_separated_prefix  like prefix, then end of path or '/'. Must not end with '/' nor
#                          contain '?'/'#' (Envoy's validation).
#   safe_regex             full match of the path without query/fragment (case_sensitive is
#                          ignored, as in Envoy).
#   headers                all must hold: string_match (exact/prefix/suffix/contains with
#                          ignore_case, safe_regex = full match), range_match (a decimal
#                          integer, optional sign, in [start, end)), present_match (true: the
#                          header is there, false: it is absent), no matcher = present,
#                          invert_match flips the result. A missing header fails every string
#                          matcher whatever invert_match says, unless
#                          treat_missing_header_as_empty (then "" is matched and inverted).
#                          A repeated header matches when one of its values does
#                          (Envoy 1.40). :method, :path
#                          (query included), :authority and :scheme read the RouteInput
#                          fields; "host" is :authority as well (HTTP/1 has only Host).
#   query_parameters       the query is split on '&', each piece at its first '=' (no '=':
#                          value ""); the first parameter with that exact name is matched.
#                          Like Envoy's route matching, names and values are NOT
#                          percent-decoded ("a%20b" only matches "a%20b"). present_match
#                          (either value) or no matcher: the parameter is present.
# The fast path: a route whose match depends on the path alone ("plain": prefix, path or
# path_separated_prefix without header/query matchers) costs a length check and one word
# compare (the key's last 8 bytes, where keys sharing "/api/v1/..." differ) before memcmp.
# A run of >= RT_INDEX_MIN_RUN consecutive plain routes is indexed: one hash map keyed by
# (case folding, key bytes) holds the first route of the run for each prefix, separated
# prefix and exact path. Selection walks the path once, 8 bytes at a time, keeping the hash
# state of the whole words (raw and ASCII-folded); at each distinct key length it finishes
# the state with the tail bytes and probes the map, and it keeps the lowest route position
# found: exactly the first matching route of the run in config order, for (longest key / 8)
# word steps + (distinct lengths) probes instead of one compare per route. Regex and
# header/query routes are checked one by one in their place, from a packed 32-byte record
# per route (RouteScan) so the scan stays in cache; the RouteEntry is read only when the
# path test passes. A safe_regex is skipped without regexec when the path does not start
# with the literal text the pattern begins with (e.g. "/users/" of "/users/[0-9]+").
#
# Actions
# -------
#   weighted_clusters  cumulative weights; route_pick_weighted picks the first cluster whose
#                      cumulative weight exceeds random % total (Envoy's pick). The sum must
#                      be > 0; zero-weight clusters are never picked.
#   prefix_rewrite     replaces the matched part: the prefix (prefix, path_separated_prefix),
#                      the whole path (path, and safe_regex routes: the query-less path); the
#                      query is kept. An empty prefix_rewrite is no rewrite (Envoy).
#   regex_rewrite      every non-overlapping match in the query-less path is replaced (RE2
#                      GlobalReplace semantics: an empty match right after the previous match
#                      is skipped one character on), query kept. The substitution may use
#                      \0..\9 (groups, checked against the pattern) and \\. POSIX matching is
#                      leftmost-longest where RE2 is leftmost-first: only alternatives that
#                      can match at the same place ("a|ab") can capture differently.
#   redirect           Location = scheme "://" host port path, as Envoy's newUri:
#                      scheme: scheme_redirect, else "https" if https_redirect, else the
#                      request's scheme. port: ":" port_redirect or none. host: host_redirect,
#                      else the request host, its port removed when port_redirect is set or
#                      when the scheme changes and the port was the default of the request's
#                      protocol (x-forwarded-proto if the request has one, else r.scheme):
#                      http://a:80 -> https://a, http://a:8080 -> https://a:8080.
#                      path: path_redirect (+ the request's query unless path_redirect has
#                      its own '?'), else the request path with prefix_rewrite or
#                      regex_rewrite (on the query-less path) applied;
#                      a '/' is prepended if missing; strip_query drops "?..." (not from a
#                      path_redirect that has its own query). status: response_code.
#   direct_response    status and body. Envoy also sends a Location (the request's own URL,
#                      built the same way) for a direct response with status 201 or 3xx;
#                      route_redirect_location returns it for those.
#
# Header mutations
# ----------------
# Each entry carries the merged request and response operations of its route, its virtual
# host and the route configuration, in application order. Envoy's default
# (most_specific_header_mutations_wins false) evaluates the ROUTE level first, then the
# VIRTUAL HOST, then the ROUTE CONFIGURATION, and the later level wins: an OVERWRITE at the
# route configuration replaces a value the route set, so "most specific wins" is FALSE by
# default; with most_specific_header_mutations_wins true (read from the RouteConfiguration
# if it has that attribute) the order is reversed and the route's own values win.
# Within one level (RouteHeaderOp.level) the caller applies, as Envoy's HeaderParser does:
#   1. every RHO_REMOVE (they come first in the level);
#   2. decide each add against the headers as they are now (after the removals, before any
#      add of this level): ADD_IF_ABSENT only if the name is absent, OVERWRITE_IF_EXISTS
#      only if it is present;
#   3. apply the overwrites (OVERWRITE_IF_EXISTS[_OR_ADD]: replace all values with this one,
#      or add it) in order, then the appends (APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT: add
#      one more field line) in order.
# Names are lowercase. Adds with an empty value are dropped at build time unless they have
# keep_empty_value (Envoy's default is false). Values are literal: Envoy's %COMMAND% formatters are not
# evaluated; op.formatted flags a value containing '%' so the caller can. Removing or adding
# ':'-pseudo-headers or host is a ConfigError (Envoy refuses them; use host_rewrite_literal).
#
# Regexes
# -------
# Patterns are RE2 syntax in the config. fastproxy.config.regex translates them to POSIX ERE
# (re2_to_posix(pattern, path, full_match=True) for matches, rewrite_to_posix() for
# regex_rewrite, which also maps the substitution's \N to POSIX group numbers, since RE2's
# (?:...) and named groups become POSIX groups); without that module the patterns are used
# as POSIX EREs unchanged. Match patterns are compiled REG_EXTENDED|REG_NOSUB, anchored
# (a full match); rewrite patterns without REG_NOSUB, unanchored. regcomp runs under the C
# locale (uselocale on this thread): byte semantics and ASCII ranges whatever the
# environment says, and glibc's fast single-byte regexec. regexec is called with
# REG_STARTEND, so paths need no NUL terminator (string matches copy header values to a
# NUL-terminated buffer first: see _rt_string_match). glibc's regexec takes a lock inside
# each compiled pattern, so with regex_copies=N every pattern is compiled N times and worker
# w uses copy w % N: pass the worker count to keep regex routes lock-free. This is the
# core's one regex policy: the native filters' matchers are built by the same _MatchBuilder,
# with one copy per worker too (make_http_cfg passes the worker count to both).

from libc.string cimport memchr, memcmp, memmove

from fastproxy.errors import ConfigError

cdef extern from "<regex.h>" nogil:
    ctypedef struct regex_t:
        size_t re_nsub
    ctypedef int regoff_t
    ctypedef struct regmatch_t:
        regoff_t rm_so
        regoff_t rm_eo
    enum:
        REG_EXTENDED
        REG_NOSUB
        REG_NOMATCH
        REG_STARTEND
    int regcomp(regex_t* preg, const char* pattern, int cflags)
    int regexec(const regex_t* preg, const char* string, size_t nmatch, regmatch_t* pmatch,
                int eflags)
    size_t regerror(int errcode, const regex_t* preg, char* errbuf, size_t errbuf_size)
    void regfree(regex_t* preg)

cdef extern from "<string.h>" nogil:
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen)
    void* memrchr(const void* s, int c, size_t n)

cdef extern from "<locale.h>" nogil:
    ctypedef void* locale_t
    enum:
        LC_ALL_MASK
    locale_t newlocale(int category_mask, const char* locale, locale_t base)
    locale_t uselocale(locale_t newloc)
    void freelocale(locale_t locobj)

# ---------------------------------------------------------------- constants

cdef enum:                          # RouteEntry.action
    ROUTE_CLUSTER = 1
    ROUTE_WEIGHTED_CLUSTERS = 2
    ROUTE_REDIRECT = 3
    ROUTE_DIRECT_RESPONSE = 4

cdef enum:                          # RouteEntry.match_kind
    RM_PREFIX = 1
    RM_PATH = 2
    RM_SAFE_REGEX = 3
    RM_PATH_SEPARATED_PREFIX = 4
    RM_NEVER = 5                    # a prefix containing '?' or '#'
    RM_CONNECT = 6                  # connect_matcher: CONNECT requests, and only they

cdef enum:                          # RouteStringMatch.kind
    RSM_EXACT = 1
    RSM_PREFIX = 2
    RSM_SUFFIX = 3
    RSM_CONTAINS = 4
    RSM_SAFE_REGEX = 5

cdef enum:                          # RouteHeaderMatcher.source: where the value comes from
    RHS_HEADERS = 0
    RHS_METHOD = 1
    RHS_PATH = 2
    RHS_AUTHORITY = 3
    RHS_SCHEME = 4

cdef enum:                          # RouteHeaderOp.action
    RHO_REMOVE = 0
    RHO_APPEND_IF_EXISTS_OR_ADD = 1
    RHO_ADD_IF_ABSENT = 2
    RHO_OVERWRITE_IF_EXISTS_OR_ADD = 3
    RHO_OVERWRITE_IF_EXISTS = 4

cdef enum:                          # RouteHeaderOp.level
    RHL_ROUTE = 0
    RHL_VIRTUAL_HOST = 1
    RHL_ROUTE_CONFIGURATION = 2

cdef enum:                          # negative results of the writing functions
    ROUTE_NONE = -1                 # no rewrite / no Location for this entry
    ROUTE_NO_ROOM = -2              # the caller's buffer is too small

cdef enum:
    RT_INDEX_MIN_RUN = 8            # shorter runs of plain routes are cheaper to scan
    RT_MAX_MATCH = 32               # regmatch_t slots a regex_rewrite may need (POSIX
                                    # group numbers: RE2's (?:) groups become groups too)

# ---------------------------------------------------------------- structs

cdef struct RouteStr:               # bytes in the table's arena; p == NULL means "not set"
    const char* p
    size_t n

cdef struct RouteHeader:            # one request header, as the connection manager holds it
    const char* name
    size_t name_len
    const char* value
    size_t value_len

cdef struct RouteInput:
    const char* method
    size_t method_len
    const char* path                # origin-form target as received, query included
    size_t path_len
    const char* host                # :authority / Host, may contain ":port"; NULL: absent
    size_t host_len
    const char* scheme
    size_t scheme_len
    int nheaders
    const RouteHeader* headers
    unsigned int worker             # selects this worker's regex copies
    uint8_t connect                 # a CONNECT request: only connect_matcher routes match

cdef struct RouteRegex:
    RouteStr literal                # match patterns: every match starts with these bytes
    uint64_t literal_last           # _rt_last_word(literal)
    regex_t* copies                 # ncopies compiled copies of one pattern
    int ncopies
    int ncompiled                   # how many to regfree
    int ngroups                     # POSIX capture groups (rewrite patterns)
    RouteRegex* next                # the table's list of regexes, for freeing

cdef struct RouteStringMatch:
    int kind                        # RSM_*
    uint8_t ignore_case             # value is stored lowercase then
    RouteStr value
    RouteRegex* regex               # RSM_SAFE_REGEX: anchored

cdef struct RouteHeaderMatcher:
    RouteStr name                   # lowercase
    int source                      # RHS_*
    uint8_t presence_only           # no string match: test presence against `present`
    uint8_t present
    uint8_t invert
    uint8_t missing_as_empty
    uint8_t is_range                # range_match: an integer value in [range_start, range_end)
    int64_t range_start
    int64_t range_end
    RouteStringMatch sm

cdef struct RouteQueryMatcher:
    RouteStr name
    uint8_t presence_only
    RouteStringMatch sm

cdef struct RouteWeightedCluster:
    int cluster                     # the caller's cluster index
    uint32_t weight
    uint64_t cumulative             # sum of the weights up to and including this one

cdef struct RouteRewritePart:       # a parsed regex_rewrite substitution
    int group                       # -1: literal text
    RouteStr text

cdef struct RouteHeaderOp:
    int action                      # RHO_*
    int level                       # RHL_*: the ops of one level are applied together
    RouteStr name                   # lowercase
    RouteStr value                  # RHO_REMOVE: not set
    uint8_t formatted               # the value contains '%' (Envoy would format it)

cdef struct RouteHeaderOps:
    int n
    RouteHeaderOp* ops              # grouped by level in application order; removes first

cdef struct RouteEntry:
    RouteStr name
    void** per_filter               # typed_per_filter_config by HTTP filter index, or NULL
    RouteStr vhost_name
    int vhost                       # index of its virtual host
    int index                       # position in the virtual host's routes
    # match
    int match_kind                  # RM_*
    uint8_t case_sensitive
    uint8_t plain                   # depends on the path alone (indexable)
    RouteStr match_value            # prefix / path / separated prefix (lowercase if !cs)
    uint64_t match_last             # _rt_last_word(match_value): the cheap first compare
    RouteRegex* match_regex         # RM_SAFE_REGEX
    int nheader_matchers
    RouteHeaderMatcher* header_matchers
    int nquery_matchers
    RouteQueryMatcher* query_matchers
    # action
    int action                      # ROUTE_*
    int cluster                     # ROUTE_CLUSTER
    int nweighted
    RouteWeightedCluster* weighted
    uint64_t total_weight
    uint64_t timeout_ms             # 0: no timeout
    RouteStr host_rewrite_literal
    uint8_t auto_host_rewrite
    RouteStr prefix_rewrite         # the route action's, or the redirect's
    RouteRegex* rewrite_regex       # regex_rewrite pattern (unanchored, with groups)
    int nrewrite_parts
    int rewrite_nmatch              # 1 + the highest group the substitution uses
    RouteRewritePart* rewrite_parts
    # redirect / direct response
    RouteStr scheme_redirect
    RouteStr host_redirect
    RouteStr port_redirect          # ":8443"
    RouteStr path_redirect
    uint8_t https_redirect
    uint8_t strip_query
    uint8_t path_redirect_has_query
    int status                      # redirect response_code or direct response status
    RouteStr body
    # header mutations
    RouteHeaderOps request_headers
    RouteHeaderOps response_headers

cdef struct RouteRunSlot:           # one key of a run index
    uint64_t hash
    const char* key
    uint32_t len
    uint8_t used
    uint8_t ci                      # key is lowercase, compared with case folding
    int prefix_route                # first route position with this prefix, or -1
    int separated_route             # ... path_separated_prefix
    int path_route                  # ... exact path

cdef struct RouteRunIndex:
    uint32_t mask
    RouteRunSlot* slots
    int nlens
    uint32_t* lens                  # distinct prefix / separated prefix lengths, ascending
    uint32_t max_path_len           # longest exact path key
    uint32_t limit                  # longest key: the walk never reads further
    int first                       # the run's first position: finding it ends the walk
    uint8_t has_path
    uint8_t has_cs
    uint8_t has_ci

cdef struct RouteScan:              # one route's path test, packed for the one-by-one scan
    uint64_t last                   # RouteEntry.match_last
    const char* key                 # RouteEntry.match_value
    uint32_t len
    uint8_t kind                    # RM_*
    uint8_t fold                    # compare case-insensitively
    uint8_t more                    # regex or header/query matchers: finish on the RouteEntry
    int pos                         # the route's position in its virtual host

cdef struct RouteSegment:
    int start
    int count
    RouteRunIndex* index            # an indexed run, or NULL: check scan[0..count) in order
    RouteScan* scan

cdef struct RouteVhost:
    RouteStr name
    int nroutes
    RouteEntry* routes
    int nsegments
    RouteSegment* segments

cdef struct RouteDomainSlot:
    uint64_t hash
    const char* key                 # lowercase
    uint32_t len
    int vhost                       # -1: empty slot

cdef struct RouteDomainMap:
    uint32_t mask
    RouteDomainSlot* slots          # NULL: empty map

cdef struct RouteWildcardGroup:     # wildcard domains whose fixed part has this length
    uint32_t len
    RouteDomainMap map

cdef struct RouteDomainSet:
    RouteDomainMap exact
    int nsuffix
    RouteWildcardGroup* suffix      # longest first
    int nprefix
    RouteWildcardGroup* prefix      # longest first

cdef struct RouteArenaBlock:
    RouteArenaBlock* next
    size_t used
    size_t cap
    char* data

cdef struct RouteTable:
    int refcnt                      # atomic
    int nvhosts
    RouteVhost* vhosts
    RouteDomainSet domains          # every domain but "*"
    uint8_t ignore_port             # ignore_port_in_host_matching: the host's port is cut
    int default_vhost               # the "*" vhost, -1: none
    uint8_t only_default            # no domain but "*": every request goes there
    int regex_copies
    RouteRegex* regexes
    RouteArenaBlock* arena

# ---------------------------------------------------------------- lifetime

cdef void regex_list_free(RouteRegex* rx) noexcept nogil:
    """regfree the compiled copies of a builder's regexes (their memory is the owner's)."""
    cdef int i
    while rx != NULL:
        for i in range(rx.ncompiled):
            regfree(&rx.copies[i])
        rx = rx.next


cdef void _route_table_free(RouteTable* t) noexcept nogil:
    cdef RouteArenaBlock* b = t.arena
    cdef RouteArenaBlock* nb
    regex_list_free(t.regexes)
    while b != NULL:
        nb = b.next
        free(b.data)
        free(b)
        b = nb
    free(t)


cdef void route_table_incref(RouteTable* t) noexcept nogil:
    if t != NULL:
        fp_atomic_add_int(&t.refcnt, 1)


cdef void route_table_decref(RouteTable* t) noexcept nogil:
    if t != NULL and fp_atomic_add_int(&t.refcnt, -1) == 0:
        _route_table_free(t)

# ---------------------------------------------------------------- small helpers

cdef inline unsigned char _rt_lc(unsigned char c) noexcept nogil:
    if c >= 65 and c <= 90:         # 'A'..'Z'
        return c + 32
    return c


cdef inline uint64_t _rt_load(const char* p, size_t n) noexcept nogil:
    """p[:n] (n <= 8) as one little-endian word, zero-padded. Short tails are put together
    from two overlapping fixed-size loads (the overlapping bytes coincide), not copied
    through memory: a variable-length copy would stall on store forwarding."""
    cdef uint64_t w
    cdef uint32_t lo, hi
    if n >= 8:
        memcpy(&w, p, 8)
        return w
    if n >= 4:
        memcpy(&lo, p, 4)
        memcpy(&hi, p + n - 4, 4)
        return <uint64_t>lo | (<uint64_t>hi << (8 * (n - 4)))
    if n == 0:
        return 0
    return (<uint64_t><unsigned char>p[0] | (<uint64_t><unsigned char>p[n >> 1] << (8 * (n >> 1)))
            | (<uint64_t><unsigned char>p[n - 1] << (8 * (n - 1))))


cdef inline uint64_t _rt_lower8(uint64_t w) noexcept nogil:
    """Lowercase the ASCII letters of 8 bytes at once: a byte gets 0x20 added when it is in
    'A'..'Z' (bit 7 of byte+0x3f says >= 'A', of byte+0x25 says > 'Z'; no carry can cross a
    byte because the high bit is masked off first). Bytes >= 0x80 are left alone."""
    cdef uint64_t low7 = w & 0x7f7f7f7f7f7f7f7fULL
    cdef uint64_t ge_a = low7 + 0x3f3f3f3f3f3f3f3fULL
    cdef uint64_t gt_z = low7 + 0x2525252525252525ULL
    cdef uint64_t upper = (ge_a ^ gt_z) & ~w & 0x8080808080808080ULL
    return w | (upper >> 2)


cdef inline bint _rt_ieq(const char* a, const char* lower, size_t n) noexcept nogil:
    """a equals `lower` (already lowercase) ignoring ASCII case: the core's one
    case-insensitive compare (_rt_ieq2 folds both sides the same way; _ieq takes a
    NUL-terminated literal)."""
    cdef size_t i = 0
    while i + 8 <= n:
        if _rt_lower8(_rt_load(a + i, 8)) != _rt_load(lower + i, 8):
            return False
        i += 8
    if i < n:
        return _rt_lower8(_rt_load(a + i, n - i)) == _rt_load(lower + i, n - i)
    return True


cdef inline uint64_t _rt_last_word(const char* key, size_t k) noexcept nogil:
    """The last (up to) 8 bytes of a key, as _rt_starts compares them first."""
    if k >= 8:
        return _rt_load(key + k - 8, 8)
    return _rt_load(key, k)


cdef inline bint _rt_starts(const char* s, const char* key, size_t k, uint64_t last,
                            bint fold) noexcept nogil:
    """s (at least k bytes) starts with key (lowercase when fold). Keys of a route table
    tend to share their beginning ("/api/v1/...") and differ at the end, so the last word
    is compared first, with one load: most non-matches never reach memcmp."""
    cdef uint64_t w
    if k >= 8:
        w = _rt_load(s + k - 8, 8)
    else:
        w = _rt_load(s, k)
    if fold:
        w = _rt_lower8(w)
    if w != last:
        return False
    if k <= 8:
        return True
    if fold:
        return _rt_ieq(s, key, k - 8)
    return memcmp(s, key, k - 8) == 0


cdef inline bint _rt_ieq2(const char* a, size_t an, const char* b, size_t bn) noexcept nogil:
    """Both sides may have any case (the same folding as _rt_ieq, both sides folded)."""
    cdef size_t i = 0
    if an != bn:
        return False
    while i + 8 <= an:
        if _rt_lower8(_rt_load(a + i, 8)) != _rt_lower8(_rt_load(b + i, 8)):
            return False
        i += 8
    if i < an:
        return _rt_lower8(_rt_load(a + i, an - i)) == _rt_lower8(_rt_load(b + i, an - i))
    return True


# The hash of the domain maps and the run index works a word (8 bytes) at a time. Its state
# after the whole words of a string can be finished with any shorter tail, which is what
# lets the run index hash every prefix length of a path in one pass.
cdef enum:
    RT_HASH_SEED = 0x2545F491


cdef inline uint64_t _rt_hmix(uint64_t h, uint64_t w) noexcept nogil:
    h = (h ^ w) * 0x9E3779B97F4A7C15ULL
    return h ^ (h >> 29)


cdef inline uint64_t _rt_hfinal(uint64_t h, const char* tail, size_t k, size_t n,
                                bint fold) noexcept nogil:
    """Finish a hash: h covers the whole words, tail[:k] (k < 8) the rest, n the length."""
    cdef uint64_t w = _rt_load(tail, k)
    if fold:
        w = _rt_lower8(w)
    h = _rt_hmix(h, w) ^ n
    h *= 0xff51afd7ed558ccdULL
    return h ^ (h >> 33)


cdef inline uint64_t _rt_hash(const char* s, size_t n, bint fold) noexcept nogil:
    """fold: the hash of the lowercased bytes."""
    cdef uint64_t h = RT_HASH_SEED
    cdef uint64_t w
    cdef size_t i = 0
    while i + 8 <= n:
        w = _rt_load(s + i, 8)
        if fold:
            w = _rt_lower8(w)
        h = _rt_hmix(h, w)
        i += 8
    return _rt_hfinal(h, s + i, n - i, n, fold)


cdef inline size_t _rt_path_end(const char* path, size_t n) noexcept nogil:
    """Length of the path without its query and fragment."""
    cdef const char* q
    if path == NULL:
        return 0
    q = <const char*>memchr(path, 63, n)        # '?'
    if q != NULL:
        n = <size_t>(q - path)
    q = <const char*>memchr(path, 35, n)        # '#'
    if q != NULL:
        n = <size_t>(q - path)
    return n


cdef inline bint _rt_regex_full(const RouteRegex* rx, const char* s, size_t n,
                                unsigned int worker) noexcept nogil:
    cdef regmatch_t m[1]
    if rx.literal.n and (n < rx.literal.n or not _rt_starts(s, rx.literal.p, rx.literal.n,
                                                             rx.literal_last, False)):
        return False                # the pattern's literal start is not there: no regexec
    m[0].rm_so = 0
    m[0].rm_eo = <regoff_t>n
    if s == NULL:
        s = ""
    return regexec(&rx.copies[worker % <unsigned int>rx.ncopies], s, 0, m, REG_STARTEND) == 0

# ---------------------------------------------------------------- virtual host selection

cdef int _rt_domain_find(const RouteDomainMap* m, const char* s, size_t n) noexcept nogil:
    cdef uint64_t h
    cdef uint32_t j
    cdef const RouteDomainSlot* sl
    if m.slots == NULL:
        return -1
    h = _rt_hash(s, n, True)
    j = <uint32_t>h & m.mask
    while True:
        sl = &m.slots[j]
        if sl.vhost < 0:
            return -1
        if sl.hash == h and sl.len == n and _rt_ieq(s, sl.key, n):
            return sl.vhost
        j = (j + 1) & m.mask


cdef int _rt_domainset_find(const RouteDomainSet* ds, const char* h, size_t n) noexcept nogil:
    cdef int v = _rt_domain_find(&ds.exact, h, n)
    cdef int i
    cdef uint32_t k
    if v >= 0:
        return v
    for i in range(ds.nsuffix):
        k = ds.suffix[i].len
        if k < n:                   # "*.foo.com" does not match ".foo.com"
            v = _rt_domain_find(&ds.suffix[i].map, h + n - k, k)
            if v >= 0:
                return v
    for i in range(ds.nprefix):
        k = ds.prefix[i].len
        if k < n:
            v = _rt_domain_find(&ds.prefix[i].map, h, k)
            if v >= 0:
                return v
    return -1


cdef size_t _rt_port_start(const char* h, size_t n) noexcept nogil:
    """Index of the ':' that starts the port, or n when there is none."""
    cdef const char* colon = <const char*>memrchr(h, 58, n)         # ':'
    cdef size_t c
    if colon == NULL:
        return n
    c = <size_t>(colon - h)
    if memchr(colon, 93, n - c) != NULL:        # a ']' after it: "[::1]" has no port
        return n
    if h[0] != 91 and memchr(h, 58, c) != NULL: # several ':' without '[': bare IPv6
        return n
    return c


cdef int route_find_vhost(const RouteTable* t, const char* host, size_t host_len) noexcept nogil:
    """Index of the virtual host for this :authority, or -1."""
    cdef int v
    if t.nvhosts == 0:
        return -1
    if t.only_default:
        return t.default_vhost
    if host == NULL:
        return -1
    if t.ignore_port:
        host_len = _rt_port_start(host, host_len)
    v = _rt_domainset_find(&t.domains, host, host_len)
    if v >= 0:
        return v
    return t.default_vhost

# ---------------------------------------------------------------- route matching

cdef const RouteRunSlot* _rt_run_slot(const RouteRunIndex* x, uint64_t h, const char* path,
                                      size_t n, uint8_t ci) noexcept nogil:
    cdef uint32_t j = <uint32_t>h & x.mask
    cdef const RouteRunSlot* s
    while True:
        s = &x.slots[j]
        if not s.used:
            return NULL
        if s.hash == h and s.len == n and s.ci == ci:
            if ci:
                if _rt_ieq(path, s.key, n):
                    return s
            elif memcmp(path, s.key, n) == 0:
                return s
        j = (j + 1) & x.mask


cdef inline int _rt_run_take(const RouteRunSlot* s, const char* path, size_t i, size_t noq,
                             bint exact, int best) noexcept nogil:
    """The best (lowest) route position, given the slot found at length i."""
    if s == NULL:
        return best
    if exact:
        if s.path_route >= 0 and s.path_route < best:
            best = s.path_route
        return best
    if s.prefix_route >= 0 and s.prefix_route < best:
        best = s.prefix_route
    if s.separated_route >= 0 and s.separated_route < best and (i == noq or path[i] == 47):
        best = s.separated_route
    return best


cdef inline int _rt_run_probe(const RouteRunIndex* x, uint64_t hcs, uint64_t hci,
                              const char* path, size_t b, size_t L, size_t noq, bint exact,
                              int best) noexcept nogil:
    """Look path[:L] up (the states cover path[:b], b <= L < b + 8)."""
    if x.has_cs:
        best = _rt_run_take(_rt_run_slot(x, _rt_hfinal(hcs, path + b, L - b, L, False),
                                         path, L, 0), path, L, noq, exact, best)
    if x.has_ci:
        best = _rt_run_take(_rt_run_slot(x, _rt_hfinal(hci, path + b, L - b, L, True),
                                         path, L, 1), path, L, noq, exact, best)
    return best


cdef int _rt_run_find(const RouteRunIndex* x, const char* path, size_t noq) noexcept nogil:
    """First route of an indexed run matching the query-less path[:noq], or -1. One pass
    over the path a word at a time; at each key length the word states are finished with
    the tail and looked up (raw and case-folded)."""
    cdef uint64_t hcs = RT_HASH_SEED
    cdef uint64_t hci = RT_HASH_SEED
    cdef uint64_t w
    cdef size_t b = 0               # the states cover path[:b]
    cdef size_t L
    cdef int li = 0
    cdef int best = 0x7fffffff
    while True:
        while li < x.nlens and x.lens[li] < b + 8 and x.lens[li] <= noq:
            L = x.lens[li]
            li += 1
            best = _rt_run_probe(x, hcs, hci, path, b, L, noq, False, best)
            if best == x.first:
                return best
        if noq < b + 8:             # the path ends in this word
            if x.has_path and noq <= x.max_path_len:
                best = _rt_run_probe(x, hcs, hci, path, b, noq, noq, True, best)
            break
        if b + 8 > x.limit:         # no key reaches past this word
            break
        w = _rt_load(path + b, 8)
        if x.has_cs:
            hcs = _rt_hmix(hcs, w)
        if x.has_ci:
            hci = _rt_hmix(hci, _rt_lower8(w))
        b += 8
    return -1 if best == 0x7fffffff else best


cdef bint _rt_string_match(const RouteStringMatch* sm, const char* v, size_t n,
                           unsigned int worker) noexcept nogil:
    cdef size_t k = sm.value.n
    cdef size_t i
    cdef char stack[256]
    cdef char* buf
    cdef bint ok
    if sm.kind == RSM_SAFE_REGEX:
        # A NUL-terminated copy: a header value may end its allocation, and REG_STARTEND
        # alone does not stop every regexec (ASan's interceptor, for one) reading to a NUL.
        buf = &stack[0] if n < sizeof(stack) else <char*>malloc(n + 1)
        if buf == NULL:
            return False
        if n:
            memcpy(buf, v, n)
        buf[n] = 0
        ok = _rt_regex_full(sm.regex, buf, n, worker)
        if buf != &stack[0]:
            free(buf)
        return ok
    if sm.kind == RSM_EXACT:
        if n != k:
            return False
    elif sm.kind == RSM_PREFIX:
        if n < k:
            return False
    elif sm.kind == RSM_SUFFIX:
        if n < k:
            return False
        v = v + (n - k)
    elif sm.kind == RSM_CONTAINS:
        if k == 0:
            return True
        if n < k:
            return False
        if not sm.ignore_case:
            return memmem(v, n, sm.value.p, k) != NULL
        for i in range(n - k + 1):
            if _rt_ieq(v + i, sm.value.p, k):
                return True
        return False
    if k == 0:
        return True
    if sm.ignore_case:
        return _rt_ieq(v, sm.value.p, k)
    return memcmp(v, sm.value.p, k) == 0


cdef bint _rt_int64(const char* v, size_t n, int64_t* out) noexcept nogil:
    """A whole value that is a decimal integer with an optional sign, within int64."""
    cdef size_t i = 0
    cdef bint neg = False
    cdef uint64_t acc = 0
    cdef uint64_t limit
    if n and (v[0] == 43 or v[0] == 45):        # '+' / '-'
        neg = v[0] == 45
        i = 1
    if i == n:
        return False
    limit = (<uint64_t>1 << 63) if neg else (<uint64_t>1 << 63) - 1
    while i < n:
        if not 48 <= v[i] <= 57:
            return False
        if acc > (limit - <uint64_t>(v[i] - 48)) // 10:
            return False
        acc = acc * 10 + <uint64_t>(v[i] - 48)
        i += 1
    out[0] = -<int64_t>(acc - 1) - 1 if neg and acc else <int64_t>acc
    return True


cdef inline bint _rt_value_matches(const RouteHeaderMatcher* m, const char* v, size_t n,
                                   unsigned int worker) noexcept nogil:
    cdef int64_t x
    if m.is_range:
        return _rt_int64(v, n, &x) and m.range_start <= x < m.range_end
    return _rt_string_match(&m.sm, v, n, worker)


cdef bint _rt_header_matches(const RouteHeaderMatcher* m, const RouteInput* r) noexcept nogil:
    """route.v3.HeaderMatcher against a request: the one implementation the routes and the
    native filters (health_check) share. A repeated header matches when one of its field
    lines does: Envoy 1.40 matches each value on its own ("x: v" twice matches exact "v";
    "x: v1" + "x: v2" does not match exact "v1,v2"), in routes and filters alike (checked
    against Envoy in tests/test_native_filters.py); invert_match inverts that outcome."""
    cdef const char* v = NULL
    cdef size_t n = 0
    cdef bint found = False
    cdef bint ok = False
    cdef int i
    cdef const RouteHeader* h
    if m.source == RHS_HEADERS:
        for i in range(r.nheaders):
            h = &r.headers[i]
            if h.name_len == m.name.n and _rt_ieq(h.name, m.name.p, h.name_len):
                found = True
                if m.presence_only:
                    break
                if _rt_value_matches(m, h.value, h.value_len, r.worker):
                    ok = True
                    break
    else:
        if m.source == RHS_METHOD:
            v = r.method
            n = r.method_len
        elif m.source == RHS_PATH:
            v = r.path
            n = r.path_len
        elif m.source == RHS_AUTHORITY:
            v = r.host
            n = r.host_len
        else:
            v = r.scheme
            n = r.scheme_len
        found = v != NULL
        ok = found and not m.presence_only and _rt_value_matches(m, v, n, r.worker)
    if m.presence_only:
        return (found == <bint>m.present) != <bint>m.invert
    if not found:
        if not m.missing_as_empty:
            return False
        ok = _rt_value_matches(m, "", 0, r.worker)
    return ok != <bint>m.invert


cdef bint _rt_query_matches(const RouteQueryMatcher* m, const char* path, size_t path_len,
                            size_t noq, unsigned int worker) noexcept nogil:
    cdef size_t q, end, pe, ne
    cdef const char* amp
    cdef const char* eq
    cdef const char* hashmark
    if noq >= path_len or path[noq] != 63:      # no '?': no query
        return False
    q = noq + 1
    end = path_len
    hashmark = <const char*>memchr(path + q, 35, end - q)
    if hashmark != NULL:
        end = <size_t>(hashmark - path)
    while q < end:
        amp = <const char*>memchr(path + q, 38, end - q)    # '&'
        pe = end if amp == NULL else <size_t>(amp - path)
        eq = <const char*>memchr(path + q, 61, pe - q)      # '='
        ne = pe if eq == NULL else <size_t>(eq - path)
        if ne - q == m.name.n and memcmp(path + q, m.name.p, m.name.n) == 0:
            if m.presence_only:
                return True
            if eq == NULL:
                return _rt_string_match(&m.sm, "", 0, worker)
            return _rt_string_match(&m.sm, path + ne + 1, pe - ne - 1, worker)
        q = pe + 1
    return False


cdef inline bint _rt_scan_path(const RouteScan* sc, const char* path, size_t noq) noexcept nogil:
    """The path test of prefix / path / separated prefix routes; regex routes pass here and
    are tested by _rt_route_rest. Works on the packed record only."""
    cdef size_t k = sc.len
    if sc.kind == RM_PREFIX:
        return k <= noq and _rt_starts(path, sc.key, k, sc.last, sc.fold)
    if sc.kind == RM_PATH:
        return k == noq and _rt_starts(path, sc.key, k, sc.last, sc.fold)
    if sc.kind == RM_PATH_SEPARATED_PREFIX:
        return (k <= noq and (k == noq or path[k] == 47)
                and _rt_starts(path, sc.key, k, sc.last, sc.fold))
    return sc.kind == RM_SAFE_REGEX


cdef bint _rt_route_rest(const RouteEntry* e, const RouteInput* r, size_t noq) noexcept nogil:
    """Everything but the plain path test: the regex, the header and query matchers."""
    cdef int i
    cdef const char* path = r.path
    if e.match_kind == RM_SAFE_REGEX and not _rt_regex_full(e.match_regex, path, noq, r.worker):
        return False
    for i in range(e.nheader_matchers):
        if not _rt_header_matches(&e.header_matchers[i], r):
            return False
    for i in range(e.nquery_matchers):
        if not _rt_query_matches(&e.query_matchers[i], path, r.path_len, noq, r.worker):
            return False
    return True


cdef const RouteEntry* route_select_in_vhost(const RouteVhost* vh,
                                             const RouteInput* r) noexcept nogil:
    cdef size_t noq = _rt_path_end(r.path, r.path_len)
    cdef int s, i, pos
    cdef const RouteSegment* seg
    cdef const RouteScan* sc
    for s in range(vh.nsegments):
        seg = &vh.segments[s]
        if seg.index != NULL:
            pos = _rt_run_find(seg.index, r.path, noq)
            if pos >= 0:
                return &vh.routes[pos]
        else:
            for i in range(seg.count):
                sc = &seg.scan[i]
                if _rt_scan_path(sc, r.path, noq) and (
                        not sc.more or _rt_route_rest(&vh.routes[sc.pos], r, noq)):
                    return &vh.routes[sc.pos]
    return NULL


cdef const RouteEntry* route_select(const RouteTable* t, const RouteInput* r) noexcept nogil:
    """The route for this request, or NULL (no virtual host or no route: answer 404)."""
    cdef int v = route_find_vhost(t, r.host, r.host_len)
    if v < 0:
        return NULL
    if r.path == NULL:
        return NULL
    if r.connect:
        return _rt_select_connect(&t.vhosts[v], r)
    return route_select_in_vhost(&t.vhosts[v], r)


cdef const RouteEntry* _rt_select_connect(const RouteVhost* vh, const RouteInput* r) noexcept nogil:
    """A CONNECT request (no path): the first connect_matcher route whose header matchers
    pass. Path routes never match CONNECT, and connect routes match nothing else (the path
    scan's _rt_scan_path is false for RM_CONNECT)."""
    cdef int i
    for i in range(vh.nroutes):
        if vh.routes[i].match_kind == RM_CONNECT and _rt_route_rest(&vh.routes[i], r, 0):
            return &vh.routes[i]
    return NULL


cdef int route_pick_weighted(const RouteEntry* e, uint64_t random) noexcept nogil:
    """The cluster index for this request: e.cluster, or a weighted pick. -1: no cluster."""
    cdef uint64_t sel
    cdef int i
    if e.action == ROUTE_CLUSTER:
        return e.cluster
    if e.action != ROUTE_WEIGHTED_CLUSTERS or e.total_weight == 0:
        return -1
    sel = random % e.total_weight
    for i in range(e.nweighted):
        if sel < e.weighted[i].cumulative:
            return e.weighted[i].cluster
    return e.weighted[e.nweighted - 1].cluster

# ---------------------------------------------------------------- writing paths and URLs

cdef struct _RtOut:
    char* p
    size_t cap
    size_t n
    size_t need                     # every byte put, written or not: the room the text needs
    bint full


cdef inline void _rt_put(_RtOut* o, const char* s, size_t n) noexcept nogil:
    o.need += n
    if n == 0 or o.full:
        return
    if n > o.cap - o.n:
        o.full = True
        return
    memcpy(o.p + o.n, s, n)
    o.n += n


cdef inline ssize_t _rt_no_room(const _RtOut* o, size_t* need) noexcept nogil:
    if need != NULL:
        need[0] = o.need
    return ROUTE_NO_ROOM


cdef inline size_t _rt_matched_len(const RouteEntry* e, size_t noq) noexcept nogil:
    """The part of the path a prefix_rewrite replaces."""
    if e.match_kind == RM_SAFE_REGEX:
        return noq
    return e.match_value.n


cdef void _rt_replace_all(const RouteEntry* e, const char* s, size_t n, _RtOut* o,
                          unsigned int worker) noexcept nogil:
    """Write s with every match of e.rewrite_regex replaced by the substitution."""
    cdef const RouteRegex* rx = e.rewrite_regex
    cdef const regex_t* re = &rx.copies[worker % <unsigned int>rx.ncopies]
    cdef regmatch_t m[RT_MAX_MATCH]
    cdef size_t nm = <size_t>e.rewrite_nmatch
    cdef size_t p = 0, ms, me, step
    cdef ssize_t lastend = -1
    cdef int i, g
    cdef unsigned char c
    if nm > RT_MAX_MATCH:           # (refused at build time)
        nm = RT_MAX_MATCH
    if s == NULL:
        s = ""
    while p <= n:
        m[0].rm_so = <regoff_t>p
        m[0].rm_eo = <regoff_t>n
        if regexec(re, s, nm, m, REG_STARTEND) != 0:
            break
        ms = <size_t>m[0].rm_so
        me = <size_t>m[0].rm_eo
        if ms > p:
            _rt_put(o, s + p, ms - p)
        if ms == me and <ssize_t>ms == lastend:
            # An empty match where the previous match ended: copy one character, go on.
            if p >= n:
                break
            c = <unsigned char>s[p]
            step = 1
            if c >= 0xF0:
                step = 4
            elif c >= 0xE0:
                step = 3
            elif c >= 0xC0:
                step = 2
            if step > n - p:
                step = n - p
            _rt_put(o, s + p, step)
            p += step
            continue
        for i in range(e.nrewrite_parts):
            g = e.rewrite_parts[i].group
            if g < 0:
                _rt_put(o, e.rewrite_parts[i].text.p, e.rewrite_parts[i].text.n)
            elif m[g].rm_so >= 0 and m[g].rm_eo > m[g].rm_so:
                _rt_put(o, s + m[g].rm_so, <size_t>(m[g].rm_eo - m[g].rm_so))
        p = me
        lastend = <ssize_t>me
    if p < n:
        _rt_put(o, s + p, n - p)


cdef ssize_t route_rewrite_path(const RouteEntry* e, const RouteInput* r, char* out,
                                size_t cap, size_t* need) noexcept nogil:
    """The upstream :path after prefix_rewrite / regex_rewrite, query kept. Returns its
    length, ROUTE_NONE (-1) when the route rewrites nothing, ROUTE_NO_ROOM (-2) with *need
    (unless NULL) set to a capacity that holds it."""
    cdef _RtOut o
    cdef size_t noq, m
    if e.action != ROUTE_CLUSTER and e.action != ROUTE_WEIGHTED_CLUSTERS:
        return ROUTE_NONE
    if e.prefix_rewrite.p == NULL and e.rewrite_regex == NULL:
        return ROUTE_NONE
    o.p = out
    o.cap = cap
    o.n = 0
    o.need = 0
    o.full = False
    noq = _rt_path_end(r.path, r.path_len)
    if e.prefix_rewrite.p != NULL:
        m = _rt_matched_len(e, noq)
        if m > r.path_len:
            m = r.path_len
        _rt_put(&o, e.prefix_rewrite.p, e.prefix_rewrite.n)
        _rt_put(&o, r.path + m, r.path_len - m)
    else:
        _rt_replace_all(e, r.path, noq, &o, r.worker)
        _rt_put(&o, r.path + noq, r.path_len - noq)
    if o.full:
        return _rt_no_room(&o, need)
    return <ssize_t>o.n


cdef const char* _rt_find_header(const RouteInput* r, const char* lower, size_t n,
                                 size_t* vlen) noexcept nogil:
    cdef int i
    for i in range(r.nheaders):
        if r.headers[i].name_len == n and _rt_ieq(r.headers[i].name, lower, n):
            vlen[0] = r.headers[i].value_len
            return r.headers[i].value
    return NULL


cdef ssize_t route_redirect_location(const RouteEntry* e, const RouteInput* r, char* out,
                                     size_t cap, size_t* need) noexcept nogil:
    """The Location of a redirect (or of a 201/3xx direct response), as Envoy builds it.
    Returns its length, ROUTE_NONE (-1) when the entry sends none, ROUTE_NO_ROOM (-2) with
    *need (unless NULL) set to a capacity that holds it."""
    cdef _RtOut o
    cdef bint redirect = e.action == ROUTE_REDIRECT
    cdef const char* scheme
    cdef size_t scheme_len
    cdef const char* host = r.host
    cdef size_t host_len = r.host_len if r.host != NULL else 0
    cdef const char* proto
    cdef size_t proto_len = 0
    cdef const char* port = NULL
    cdef size_t port_len = 0
    cdef const char* seg_p[2]
    cdef size_t seg_n[2]
    cdef const char* q
    cdef size_t noq, m, host_end, i
    cdef bint found, remove
    cdef int k
    if not redirect:
        if e.action != ROUTE_DIRECT_RESPONSE:
            return ROUTE_NONE
        if not (e.status == 201 or (e.status >= 300 and e.status < 400)):
            return ROUTE_NONE
    o.p = out
    o.cap = cap
    o.n = 0
    o.need = 0
    o.full = False
    # scheme
    if redirect and e.scheme_redirect.p != NULL:
        scheme = e.scheme_redirect.p
        scheme_len = e.scheme_redirect.n
    elif redirect and e.https_redirect:
        scheme = "https"
        scheme_len = 5
    else:
        scheme = r.scheme
        scheme_len = r.scheme_len
        if scheme == NULL:
            scheme = "http"
            scheme_len = 4
    if redirect and e.port_redirect.p != NULL:
        port = e.port_redirect.p
        port_len = e.port_redirect.n
    # host
    if redirect and e.host_redirect.p != NULL:
        host = e.host_redirect.p
        host_len = e.host_redirect.n
    elif host_len > 0:
        found = False
        if host[0] == 91:                       # '[': IPv6 literal, the port follows "]:"
            i = host_len
            while i > 1:
                i -= 1
                if host[i] == 58 and host[i - 1] == 93:
                    found = True
                    host_end = i
                    break
        else:
            i = host_len
            while i > 0:
                i -= 1
                if host[i] == 58:
                    found = True
                    host_end = i
                    break
        if found:
            proto = _rt_find_header(r, "x-forwarded-proto", 17, &proto_len)
            if proto == NULL:
                proto = r.scheme
                proto_len = r.scheme_len
                if proto == NULL:
                    proto = ""
                    proto_len = 0
            remove = port_len > 0
            if not _rt_ieq2(scheme, scheme_len, proto, proto_len):
                if (_rt_ieq2(proto, proto_len, "https", 5) and host_len - host_end == 4
                        and memcmp(host + host_end, ":443", 4) == 0):
                    remove = True
                if (_rt_ieq2(proto, proto_len, "http", 4) and host_len - host_end == 3
                        and memcmp(host + host_end, ":80", 3) == 0):
                    remove = True
            if remove:
                host_len = host_end
    # path, as up to two pieces
    seg_p[0] = r.path
    seg_n[0] = r.path_len if r.path != NULL else 0
    seg_p[1] = NULL
    seg_n[1] = 0
    if redirect and e.path_redirect.p != NULL:
        seg_p[0] = e.path_redirect.p
        seg_n[0] = e.path_redirect.n
        if not e.path_redirect_has_query and r.path != NULL:
            q = <const char*>memchr(r.path, 63, r.path_len)
            if q != NULL:
                seg_p[1] = q
                seg_n[1] = r.path_len - <size_t>(q - r.path)
    elif redirect and e.prefix_rewrite.p != NULL and r.path != NULL:
        noq = _rt_path_end(r.path, r.path_len)
        m = _rt_matched_len(e, noq)
        if m > r.path_len:
            m = r.path_len
        seg_p[0] = e.prefix_rewrite.p
        seg_n[0] = e.prefix_rewrite.n
        seg_p[1] = r.path + m
        seg_n[1] = r.path_len - m
    elif redirect and e.rewrite_regex != NULL and r.path != NULL:
        # regex_rewrite: the query-less path rewritten in place in `out`, then the query
        # (unless strip_query), as the route action's regex_rewrite does.
        _rt_put(&o, scheme, scheme_len)
        _rt_put(&o, "://", 3)
        _rt_put(&o, host, host_len)
        _rt_put(&o, port, port_len)
        noq = _rt_path_end(r.path, r.path_len)
        m = o.n
        _rt_replace_all(e, r.path, noq, &o, r.worker)
        if o.full:
            o.need += 1                         # room for the '/' that may go in front
        elif o.n == m or out[m] != 47:          # a '/' in front if it has none
            o.need += 1
            if o.n + 1 > o.cap:
                o.full = True
            else:
                memmove(out + m + 1, out + m, o.n - m)
                out[m] = 47
                o.n += 1
        if not e.strip_query:
            _rt_put(&o, r.path + noq, r.path_len - noq)
        if o.full:
            return _rt_no_room(&o, need)
        return <ssize_t>o.n
    if redirect and e.strip_query and not e.path_redirect_has_query:
        for k in range(2):
            if seg_n[k]:
                q = <const char*>memchr(seg_p[k], 63, seg_n[k])
                if q != NULL:
                    seg_n[k] = <size_t>(q - seg_p[k])
                    if k == 0:
                        seg_n[1] = 0
                    break
    _rt_put(&o, scheme, scheme_len)
    _rt_put(&o, "://", 3)
    _rt_put(&o, host, host_len)
    _rt_put(&o, port, port_len)
    if not ((seg_n[0] and seg_p[0][0] == 47) or (seg_n[0] == 0 and seg_n[1] and seg_p[1][0] == 47)):
        _rt_put(&o, "/", 1)
    _rt_put(&o, seg_p[0], seg_n[0])
    _rt_put(&o, seg_p[1], seg_n[1])
    if o.full:
        return _rt_no_room(&o, need)
    return <ssize_t>o.n

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
    """Builds string and header matchers (RouteStringMatch, RouteHeaderMatcher) into memory
    that lives as long as the compiled config: the route table's arena (_RouteBuilder) or a
    native filter's config (_NfBuild, core/filters_native.pxi), which override alloc. Regexes
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
        if getattr(mt, "connect_matcher", False):
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
        if not isinstance(name, str) or name not in self.cluster_index:
            raise ConfigError(path, f"unknown cluster {name!r}")
        return <int>self.cluster_index[name]

    cdef int rewrite(self, RouteEntry* e, rr, str path) except -1:
        """regex_rewrite: the unanchored pattern and its substitution as parts (literal text
        or POSIX group numbers). The translator maps RE2 groups to POSIX ones (its (?:...)
        groups become groups too); without it the pattern is used as is."""
        cdef int i
        ppath = path + ".regex_rewrite.pattern.regex"
        spath = path + ".regex_rewrite.substitution"
        if not isinstance(rr.pattern, str):
            raise ConfigError(ppath, "regex must be a string")
        if not isinstance(rr.substitution, str):
            raise ConfigError(spath, "must be a string")
        if self.rewrite_to_posix is not None:
            posix, parts = self.rewrite_to_posix(rr.pattern, rr.substitution, ppath, spath)
            e.rewrite_regex = self.compile_ere(posix, False, ppath, rr.pattern)
        else:
            e.rewrite_regex = self.compile_ere(rr.pattern, False, ppath, rr.pattern)
            parts = _rt_substitution_parts(rr.substitution, e.rewrite_regex.ngroups, spath)
        groups = [p for p in parts if isinstance(p, int)]
        e.rewrite_nmatch = max(groups) + 1 if groups else 1
        if e.rewrite_nmatch > RT_MAX_MATCH or e.rewrite_nmatch > e.rewrite_regex.ngroups + 1:
            raise ConfigError(spath, f"the substitution needs group {e.rewrite_nmatch - 1}; "
                                     f"at most {min(RT_MAX_MATCH - 1, e.rewrite_regex.ngroups)}")
        e.nrewrite_parts = len(parts)
        e.rewrite_parts = <RouteRewritePart*>self.alloc(
            sizeof(RouteRewritePart) * max(1, len(parts)))
        for i, part in enumerate(parts):
            if isinstance(part, int):
                e.rewrite_parts[i].group = part
            else:
                e.rewrite_parts[i].group = -1
                self.put(&e.rewrite_parts[i].text, part)
        return 0

    cdef int action(self, RouteEntry* e, route, str path) except -1:
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
            if a.prefix_rewrite and a.regex_rewrite is not None:
                raise ConfigError(apath, "only one of prefix_rewrite, regex_rewrite")
            if a.prefix_rewrite:        # "" is no rewrite (Envoy)
                self.put(&e.prefix_rewrite, a.prefix_rewrite)
            if a.regex_rewrite is not None:
                self.rewrite(e, a.regex_rewrite, apath)
            if a.host_rewrite_literal is not None and a.auto_host_rewrite:
                raise ConfigError(apath, "only one of host_rewrite_literal, auto_host_rewrite")
            if a.host_rewrite_literal:
                self.put(&e.host_rewrite_literal, a.host_rewrite_literal)
            e.auto_host_rewrite = bool(a.auto_host_rewrite)
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
            rr = getattr(rd, "regex_rewrite", None)
            if rr is not None:
                if rd.path_redirect or rd.prefix_rewrite:
                    raise ConfigError(rpath, "only one of path_redirect, prefix_rewrite, regex_rewrite")
                self.rewrite(e, rr, rpath)
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
        if hv.value == "" and not getattr(hv, "keep_empty_value", False):
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
    """The main thread's reference to a compiled route table (see core/router.pxi)."""
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
        cdef char small[256]
        cdef char* buf
        cdef ssize_t n
        cdef size_t need = 0
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
            # Start small so the "buffer too small" answer is exercised, then grow.
            # Start small so the "buffer too small" answer is exercised, then take the
            # room it asks for, as a worker does (core/http_conn.pxi, route_text).
            buf = small
            n = route_rewrite_path(e, &r, buf, 16, &need)
            if n == ROUTE_NO_ROOM:
                buf = <char*>malloc(max(<size_t>1, need))
                if buf == NULL:
                    raise MemoryError()
                n = route_rewrite_path(e, &r, buf, need, NULL)
                if n == ROUTE_NO_ROOM:
                    free(buf)
                    raise AssertionError("route_rewrite_path: the room it asked for is too small")
            if n >= 0:
                out["path"] = buf[:n].decode("utf-8", "surrogateescape")
            if buf != small:
                free(buf)
            buf = small
            n = route_redirect_location(e, &r, buf, 16, &need)
            if n == ROUTE_NO_ROOM:
                buf = <char*>malloc(max(<size_t>1, need))
                if buf == NULL:
                    raise MemoryError()
                n = route_redirect_location(e, &r, buf, need, NULL)
                if n == ROUTE_NO_ROOM:
                    free(buf)
                    raise AssertionError("route_redirect_location: the room it asked for is too small")
            if n >= 0:
                out["location"] = buf[:n].decode("utf-8", "surrogateescape")
            if buf != small:
                free(buf)
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


cdef list _rt_ops_list(const RouteHeaderOps* ops):
    cdef int i
    return [(_RT_LEVEL_NAMES[ops.ops[i].level], _RT_ACTION_NAMES[ops.ops[i].action],
             _rt_pystr(ops.ops[i].name), _rt_pystr(ops.ops[i].value)) for i in range(ops.n)]


def compile_route_table(route_config, dict cluster_index, int regex_copies=1,
                        str path="route_config", per_filter=None):
    """Compile a model_http.RouteConfiguration into a RouteTable (see core/router.pxi).
    cluster_index maps every cluster name a route may use to the caller's integer index.
    per_filter(route, vhost, route_config): the route's per-HTTP-filter config addresses
    (a list, 0 for none) or None."""
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
    h.name = getattr(route_config, "name", "") or ""
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
    b.cluster_index = cluster_index
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
    t.ignore_port = bool(getattr(route_config, "ignore_port_in_host_matching", False))
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
            b.action(e, route, rpath)
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
    return h
