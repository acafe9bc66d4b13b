"""Repositories of order_svc: they own the SQL and return domain dataclasses."""
