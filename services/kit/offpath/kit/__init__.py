"""Shared plumbing of the offpath services: settings, logging, AWS clients,
the gRPC serve/shutdown loop, the SQS wire format, and the local AWS stack."""
