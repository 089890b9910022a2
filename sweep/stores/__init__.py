"""Where a study lives: store URLs, damaged-file checks, Optuna storages and the study lock, the gRPC proxy."""
