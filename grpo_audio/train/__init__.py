"""Training: the phases of a run (``run``), the TRL trainer subclass (``trainer``), the reward bridge, callbacks,
the cold start and the run directory."""
