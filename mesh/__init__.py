"""The shared runtime of every service: bootstrap, settings, interceptors, errors, stores."""
