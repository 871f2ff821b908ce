"""The one exception for bad input: its message names the bad value, what is allowed, and the fix."""

from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException, ValueError):
    """A bad configuration value. Hydra prints only the message (no traceback) and exits non-zero."""
