"""tracking_svc's Redis keys: the per-order tracking log and the ETA calibration."""
