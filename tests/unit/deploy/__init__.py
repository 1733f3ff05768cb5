"""Tests of deploy/. A package (the only one under tests/) so its test modules
can share ``manifests.py`` through a relative import; see that module's
docstring for why."""
