"""The fault suite: every reliability promise as a case run against the real
services and the local AWS endpoint, with faults injected by
:mod:`offpath.dev.faultproxy` (``make faults``, ``python -m offpath.faults``).
Never installed in production images."""
