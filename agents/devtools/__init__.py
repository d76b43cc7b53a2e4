"""Development and benchmark tools: the fault-injecting fake upstream, the load generator and
the history seeder (``seed_history``)."""
