# The consistent-hash tables of the load balancer (RING_HASH's ring, MAGLEV's table), built
# on the main thread with a host set and read by the workers. Owner: issue 16's LB work.
