# Active health checks (Envoy's HealthCheck: HTTP, TCP, gRPC): checkers that run without
# the GIL, set HF_FAILED_ACTIVE_HC / HF_DEGRADED_ACTIVE_HC on a host's HostShared and ask
# for a host-set rebuild on a transition. Owner: issue 16's HC work.
