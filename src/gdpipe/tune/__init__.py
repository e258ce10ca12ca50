"""make tune: an Optuna study of the learning rate shared by any number of workers (docs/tune.md)."""
