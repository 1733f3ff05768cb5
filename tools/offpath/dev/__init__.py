"""Development tools: the local AWS endpoint (a moto server on loopback), the
set-up that creates the queues and table, the ``make run`` stack, and a
fault-injecting TCP proxy. Never installed in production images."""
