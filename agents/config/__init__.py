"""Config as code: ``apply`` and ``export`` (docs/INTERFACES.md §2)."""
