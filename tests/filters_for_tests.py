"""Network filter classes that tests name in configs ("filters_for_tests:Tagger")."""
import fastproxy
from fastproxy.filters import FilterStatus, NetworkFilter


class Tagger(NetworkFilter):
    """Keeps its config and counts instances, so a test can see what a factory built."""

    instances = 0

    def __init__(self, config=None):
        super().__init__(config)
        type(self).instances += 1

    def on_data(self, data, end_stream):
        return FilterStatus.CONTINUE


class Outer:
    class Inner(NetworkFilter):
        """Reached as "filters_for_tests:Outer.Inner"."""


class NotAFilter:
    """A class that does not derive from NetworkFilter: the loader must refuse it."""

    def __init__(self, config=None):
        self.config = config


not_a_class = 42


class TagRequest(fastproxy.HttpFilter):
    """Sets config["header"] to the route's per-route "value", else config["value"]."""

    def decode_headers(self, headers, end_stream):
        per_route = self.callbacks.route_config
        value = per_route["value"] if per_route else self.config["value"]
        headers[self.config["header"]] = value
        return fastproxy.FilterStatus.CONTINUE


class FilterStateFromHeader(fastproxy.HttpFilter):
    """callbacks.filter_state[config["key"]] = the request's config["header"] (if it has
    one): what Envoy's set_filter_state filter does with an envoy.hashable_string object.
    On the response it says how many Set-Cookie fields it saw (x-filter-saw-set-cookie)."""

    def decode_headers(self, headers, end_stream):
        value = headers.get(self.config["header"])
        if value is not None:
            self.callbacks.filter_state[self.config["key"]] = value
        return fastproxy.FilterStatus.CONTINUE

    def encode_headers(self, headers, end_stream):
        headers["x-filter-saw-set-cookie"] = str(len(headers.get_all("set-cookie")))
        return fastproxy.FilterStatus.CONTINUE
