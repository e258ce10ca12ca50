"""A team's tracking stack on this machine: PostgreSQL, and an MLflow server on it that proxies the artifacts.
An operations tool beside the tracking client (gdpipe.track), which only needs the server's URL.

    python -m gdpipe.team_server start --dir .server --port 5002 [--auth]   # make server
    python -m gdpipe.team_server stop --dir .server                         # make server-stop

Everything lives in one folder (`--dir`): the database cluster (postgres/), the artifacts (artifacts/)
and both servers' logs. Starting again reuses it. PostgreSQL listens on a socket in its own folder
only, never on the network, so it needs no password; MLflow listens on 127.0.0.1. With `--auth`,
MLflow's basic-auth app guards the server: its admin is MLFLOW_TRACKING_USERNAME with
MLFLOW_TRACKING_PASSWORD (given to MLflow in its environment, stored only as MLflow's hash).
docs/team-server.md says how a team runs the same on its own host.

    stack.py          the stack's folder: where each part keeps its files, and the last words of their logs
    postgres.py       the PostgreSQL cluster: made, started, its databases created and reached, stopped
    mlflow_server.py  the MLflow server: started on the cluster, waited for, found again, stopped
    __main__.py       the commands: start (stopping what it started if a step fails) and stop
"""
