"""The one error type for invalid user input, shared by every layer.

`models` sits at the bottom of the dependency graph (torch only), so the error lives here
and `workers`, `search_spaces` and `orchestrator` raise or catch it. The CLI turns it into
exit status 2 with no traceback.
"""


class ConfigError(ValueError):
    """A configuration value is not allowed. The message names the field, the value
    received and what is allowed, e.g.
    ``model.depth: got 21; a basic cifar net needs depth = 6n+2 (20, 26, 32, ...)``."""
