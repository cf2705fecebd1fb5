"""The HTTP server's parts besides the app itself (``digitlab.serve``): the request guard, the
OpenAPI bodies, metrics and access logs."""
