"""Training support for CoMeT memory (the samples it trains on come from ``comet_core.tasks``)."""
