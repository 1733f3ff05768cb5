"""Test support shared by offpath's tests: one typed fake per AWS client
(behind the same Protocols the runtime code declares), and log readers."""
