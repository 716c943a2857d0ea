# Retries and hedging (Envoy's RetryPolicy, HedgePolicy and the router's retry state): the
# route's policy (built from RouteAction.retry_policy / VirtualHost.retry_policy), whether an
# upstream attempt's outcome is retried, the back-off, the per-try timeouts, retry budgets
# and the circuit breakers' max_retries. Owner: issue 16's RETRY work.

cdef struct RetryPolicy:
    uint32_t retry_on                   # placeholder until the policy is built


cdef int route_retry_build(_RouteBuilder b, RouteEntry* e, a, str apath) except -1:
    """e.retry from the route action `a` (and its virtual host's policy); NULL: none."""
    e.retry = NULL
    return 0
