# Request mirroring (Envoy's RouteAction.request_mirror_policies): a shadow copy of the
# request to another cluster, its response dropped and its failures invisible to the
# client. Owner: issue 16's MIRROR work.

cdef struct MirrorPolicy:
    int cluster                         # placeholder until the policy is built


cdef int route_mirrors_build(_RouteBuilder b, RouteEntry* e, a, str apath) except -1:
    """e.mirrors / e.nmirrors from the route action `a`."""
    e.nmirrors = 0
    e.mirrors = NULL
    return 0
