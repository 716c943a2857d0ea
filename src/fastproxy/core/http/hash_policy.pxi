# Route hash policies (Envoy's RouteAction.hash_policy): the request's hash for the
# consistent-hash load balancers (RING_HASH, MAGLEV), from a header, a cookie (generated
# with its ttl when missing), a query parameter, the source IP or filter state; `terminal`
# stops the list. The stream's LbContext (HStream.lb) carries it to the pick. Owner: issue
# 16's HASH work.

cdef struct HashPolicy:
    int n                               # placeholder until the policy is built


cdef int route_hash_policy_build(_RouteBuilder b, RouteEntry* e, a, str apath) except -1:
    """e.hash_policy from the route action `a`; NULL: none."""
    e.hash_policy = NULL
    return 0
