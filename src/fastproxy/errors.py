"""Exceptions raised by fastproxy's control surface."""


class FastProxyError(Exception):
    """Base class of every error fastproxy raises on purpose."""


class ConfigError(FastProxyError, ValueError):
    """A configuration is invalid. ``path`` names the offending field, Envoy-style
    (``static_resources.listeners[0].address.socket_address.port_value``)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ListenerBindError(FastProxyError, OSError):
    """A listener could not bind its address (port in use, address not local...)."""
