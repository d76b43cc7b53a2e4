"""Who may do what: API key format, verification and principals, provider secrets at rest, what an
error discloses to whom, and the key API."""
