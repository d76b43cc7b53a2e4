"""Development and benchmark tools: the fault-injecting fake upstream and the load generator."""
