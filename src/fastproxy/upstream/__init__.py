"""The cluster manager's Python side: load-balancer options and host sets (lb.py), active
health checks (health_check.py), outlier detection (outlier.py)."""
