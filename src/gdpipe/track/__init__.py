"""track: publish finished results to MLflow. The only part of gdpipe that imports mlflow.

record.py        what one variant's run holds, gathered from the stage outputs (no MLflow)
publish.py       what a run holds in MLflow, and `publish`: one run per variant and result
claim.py         exactly once: how publishers of one result claim it, so that it gets one run
store.py         the store as its writers share it: taking turns, a half-built sqlite file, the experiment
failures.py      the store's failures in words: one line, which store (no secrets), what to do
versions.py      each result's model as a version of `<prefix>-<variant>`; the challenger alias
champion.py      the champion pair: a result promoted whole, a record and two aliases that follow it
registry.py      the commands `promote` and `serve`
where.py         where the store is, its name without secrets, whether it holds the current result (no MLflow)
environment.py   the software a run was made with, as its tags gdpipe.env.* (no MLflow)
reproduce.py     make reproduce: a registered version rebuilt from its lineage, from nothing, and compared
compare.py       make reproduce's comparison: each output, the model, every metric step, to the bit
study_run.py     make tune's parent run: one per Optuna study, the trials' runs its children
pyfunc_model.py  the trained line as an MLflow pyfunc model (logged as code, so MLflow imports it too)
settings.py      MLflow's settings (no telemetry, quiet logs): `apply()` before mlflow is imported
"""
