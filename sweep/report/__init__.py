"""Reading a finished study: tables, plots and the refined study file (never the runner)."""
