"""Running a study: opening it, the worker loop, local processes and one trial."""
