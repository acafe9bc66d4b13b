"""tracking_svc: live order tracking, ETAs and multi-stop route planning."""
