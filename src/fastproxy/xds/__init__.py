"""Dynamic configuration (xDS): the transport to a control plane (ads_client) and the
resource layer that turns received resources into the model the YAML loader builds."""
