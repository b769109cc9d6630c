"""Settings: one typed object from flags, environment, config file and defaults, and its reference page."""
