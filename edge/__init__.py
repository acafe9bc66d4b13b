"""The edge: gRPC-web for browsers and mobile web, in front of every service."""
