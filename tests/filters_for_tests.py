"""Network filter classes that tests name in configs ("filters_for_tests:Tagger")."""
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
