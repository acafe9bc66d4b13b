"""matching_svc: scored dispatch, sequential offers with durable timeouts, atomic accept."""
