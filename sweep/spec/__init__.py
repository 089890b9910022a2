"""What a study is: its search space, samplers and pruners, the study and its TOML file."""
