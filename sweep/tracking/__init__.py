"""MLflow: the tracker and its store, runs as the UI shows them, the relay of local workers' runs,
the parent run's summary, the registered model."""
