# Outlier detection (Envoy's OutlierDetection): per-host results reported by the router and
# the pool (consecutive 5xx, gateway and local-origin failures, success rate, failure
# percentage), ejections (HF_FAILED_OUTLIER_CHECK) and their expiry. Owner: issue 16's OD
# work.
