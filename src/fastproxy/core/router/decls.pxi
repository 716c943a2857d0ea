# The compiled router's declarations and its contract (what follows is the design of all
# its files: core/router/decls.pxi; match.pxi and matchers.pxi on the workers, the matchers
# shared with the native filters; build.pxi on the main thread).
#
# The compiled router: Envoy's route table (envoy.filters.http.router with an inline
# route_config) as immutable C structs, built once on the main thread and read by every
# worker without the GIL.
#
# Building and lifetime
# ---------------------
#   h = compile_route_table(route_config, cluster_index, regex_copies=1, path="route_config",
#                           per_filter=None, cluster_ref=None)
# runs on the main thread with the GIL: it validates the fastproxy.http.RouteConfiguration
# (ConfigError names the field), turns cluster names into integer indexes (cluster_index:
# {name: index}, or with cluster_ref every name in order of use, the table then holding a
# reference to the ClusterCfg of cluster_ref(name): t.clusters[index], NULL for a name with
# no cluster), compiles every regex, and lays everything out in one RouteTable (which also
# owns its routes' per-filter configs: make_route_table in core/http/hcm_config.pxi). All strings and arrays of a table
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
#       that much room: route_text(fn, e, &r, stack, cap, &text) does that, in match.pxi)
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
# REG_STARTEND: glibc reads only the bytes in those bounds, so a path or header value is
# matched where it lies, never copied. ASan's regexec interceptor, though, checks
# strlen(string) + 1 bytes whatever the flags, so every string a worker matches must have
# a NUL after it in its own allocation, and does: a received head is followed by one
# (_h1_head_reserve, core/http/codec_h1.pxi), each string of a filter's header map is
# NUL-terminated (_hm_own, core/http/filter_manager.pxi), the rest are C literals, the
# client address array, or Python bytes (RouteTableHandle.select). glibc's regexec takes a lock inside
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

cdef struct RouteRewrite:           # a regex_rewrite (RegexMatchAndSubstitute): every match
                                    #   of `regex` replaced by the parts (_rt_replace_all)
    RouteRegex* regex               # the pattern (unanchored, with groups); NULL: none
    int nparts
    int nmatch                      # 1 + the highest group the substitution uses
    RouteRewritePart* parts

cdef struct RouteHeaderOp:
    int action                      # RHO_*
    int level                       # RHL_*: the ops of one level are applied together
    RouteStr name                   # lowercase
    RouteStr value                  # RHO_REMOVE: not set
    uint8_t formatted               # the value contains '%' (Envoy would format it)

cdef struct RouteHeaderOps:
    int n
    RouteHeaderOp* ops              # grouped by level in application order; removes first

cdef enum:                          # RouteEntry.grpc_timeouts (Envoy's RouteEntry::usingNewTimeouts)
    RG_NONE = 0                     # neither: the route timeout
    RG_LEGACY = 1                   # max_grpc_timeout set (no max_stream_duration): a gRPC
                                    #   request's grpc-timeout, capped, is the route timeout
    RG_STREAM = 2                   # max_stream_duration set: the route timeout is not used; the
                                    #   stream's life is bounded (grpc-timeout may set the bound)


# The cluster manager's route policies: each struct is defined, built and applied by its own
# file (core/http/retry.pxi, hash_policy.pxi, shadow.pxi); the route only points to them.
cdef struct RetryPolicy
cdef struct HashPolicy
cdef struct MirrorPolicy

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
    # gRPC timeouts (applied by core/http/grpc.pxi, grpc_route_timeouts)
    uint8_t grpc_timeouts           # RG_*
    uint64_t max_grpc_timeout_ms    # RG_LEGACY: max_grpc_timeout (0: no cap)
    uint64_t grpc_timeout_offset_ms # RG_LEGACY: grpc_timeout_offset (0: none)
    uint64_t max_stream_duration_ms # RG_STREAM: max_stream_duration.max_stream_duration (0: none)
    uint8_t grpc_header_max_set     # RG_STREAM: grpc_timeout_header_max given: grpc-timeout counts
    uint64_t grpc_header_max_ms     # ... capped by it (0: no cap)
    uint64_t grpc_header_offset_ms  # RG_STREAM: grpc_timeout_header_offset (0: none)
    RouteStr host_rewrite_literal
    uint8_t auto_host_rewrite
    RouteStr prefix_rewrite         # the route action's, or the redirect's
    RouteRewrite rewrite            # regex_rewrite (rewrite.regex NULL: none)
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
    # the cluster manager's policies (NULL / 0: none), in the table's arena
    const RetryPolicy* retry        # retry_policy and hedge_policy (the route's, else its
                                    #   virtual host's): core/http/retry.pxi
    const HashPolicy* hash_policy   # hash_policy: core/http/hash_policy.pxi
    int nmirrors                    # request_mirror_policies: core/http/shadow.pxi
    const MirrorPolicy* mirrors

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

ctypedef void (*RouteCfgDestroy)(void* config) noexcept nogil

cdef struct RouteOwnedCfg:          # a per-route HTTP filter config the table frees
    RouteCfgDestroy destroy
    void* config

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
    # What the table refers to, so that it can outlive the config it was built with (an
    # RDS table serves every connection manager naming it, across their versions):
    int nclusters
    ClusterCfg** clusters           # cluster index -> the cluster (one reference each);
                                    #   NULL: no cluster of that name (503, flag NC)
    char** cluster_names            # cluster index -> its name (%UPSTREAM_CLUSTER%, filters)
    int nowned
    RouteOwnedCfg* owned            # the entries' per_filter configs (C and native filters)
    PyObject* py_keep               # a list of the Python objects they point at, or NULL


# A connection manager's routes, per worker (Envoy's RouteConfigProvider with its
# thread-local slot): one provider per RDS route configuration name, shared by every
# connection manager (of any listener version) that names it, or a private one for an
# inline route_config. The main thread builds a new table and set() posts it to every
# worker, which swaps its slot and drops the old table's reference; a stream takes its
# worker's current table (route_provider_take) when its request starts and keeps it to its
# end, so the next request on an open connection uses the new routes and a request in
# flight keeps its own. The slots are read and written only on their worker.
cdef struct RouteProvider:
    int refcnt                      # atomic
    int nworkers
    RouteTable** slots              # worker index -> its current table (one reference each)


# The writers of a route's text (route_rewrite_path, route_redirect_location), as route_text
# (match.pxi) takes them: it retries with the room the first call asked for.
ctypedef ssize_t (*RouteTextFn)(const RouteEntry* e, const RouteInput* r, char* out, size_t cap,
                                size_t* need) noexcept nogil
