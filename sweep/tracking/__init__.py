"""MLflow: the tracker, the relay of local workers' runs, the parent run's summary, the registered model."""
