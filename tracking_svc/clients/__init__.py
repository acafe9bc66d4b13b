"""tracking_svc's typed wrappers over other services' stubs."""
