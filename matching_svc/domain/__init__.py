"""matching_svc's pure domain: no I/O, tested without any store."""
