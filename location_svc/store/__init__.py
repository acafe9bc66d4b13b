"""Repositories of location_svc: the Redis keys of the geo index and presence, the history SQL."""
