"""The parts of :class:`agents.runtime.executor.Executor`, one execution's way through every
safeguard:

* :mod:`.context`: the execution's givens, what admission granted it, and its progress;
* :mod:`.plan`: what admission asks the shared state for (pure);
* :mod:`.breakers`: the breakers this process knows to be open (refused without a round trip);
* :mod:`.attempts`: the provider calls, with retries, backoff, the deadline, fallbacks and tools;
* :mod:`.results`: outcomes turned into the execution's result and its state report;
* :mod:`.background`: state calls that must still land after their caller was answered.
"""
