"""mlp-sweep's sweep layer: Optuna studies from TOML files, tracked in MLflow, reported with pandas."""
