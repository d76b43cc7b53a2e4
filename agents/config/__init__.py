"""Config as code: ``apply`` and ``export`` (CONTRACT section 2)."""
