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


class ConfigErrors(ConfigError):
    """Several configuration errors found in one pass (``errors``: each a ConfigError with
    its own ``path``). ``path`` and ``message`` are the first one's."""

    def __init__(self, errors: list):
        self.errors = list(errors)
        first = self.errors[0]
        ValueError.__init__(self, f"{len(self.errors)} errors:\n" + "\n".join(f"  {e}" for e in self.errors))
        self.path = first.path
        self.message = first.message


class ListenerBindError(FastProxyError, OSError):
    """A listener could not bind its address (port in use, address not local...);
    ``listener`` names it."""

    def __init__(self, message: str, listener: str = ""):
        super().__init__(message)
        self.listener = listener
