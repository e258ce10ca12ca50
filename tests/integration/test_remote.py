"""DVC remotes: make push, then make pull or dvc repro --pull on fresh clones through a local folder (nothing
trained, every output byte-identical, also for a result only the run-cache records), the same through S3 (a
local moto server), and each bad remote in one line with the workspace left as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from remotes import clone, git, run_remote, set_remote, workspace_bytes
from support import (
    CACHED,
    OUTPUTS,
    assert_one_error_line,
    copy_repo,
    dvc,
    free_port,
    load_default_params,
    make,
    src_env,
    stages_run,
    with_overrides,
    write_yaml,
)

BUCKET = "gdpipe"


# --- the default remote: a local folder ----------------------------------------------------------
# What docs/remote.md shows, on fresh git clones of a copy that pushed two results: the committed one, and
# one it tried (train.lr 0.1) and left, which only DVC's run-cache records. Every test asserts that nothing
# was trained: DVC's own lines, and no history/*.timing.json, which train.py writes whenever it trains.

TRIED = {"train.lr": 0.1}


@pytest.fixture(scope="module")
def pushed(reproduced_repo, tmp_path_factory, empty_store) -> dict:
    """A reproduced copy that tried TRIED, went back to the committed result and ran `make push`: the copy
    (its default remote is the folder gdpipe-storage beside it), make's output, and both results' files."""
    origin = tmp_path_factory.mktemp("pushed") / "repo"
    shutil.copytree(reproduced_repo, origin, symlinks=True)
    shutil.rmtree(origin / "mlruns")  # the store's experiment points at the original's artifact folder
    empty_store(origin / "mlruns" / "mlflow.db")
    (origin / "mlruns" / ".gitkeep").touch()
    committed = files(origin, [*OUTPUTS, "dvc.lock"])
    write_yaml(origin / "params.yaml", with_overrides(load_default_params(), TRIED))
    assert stages_run(dvc(origin, "repro").stdout) == {"train@numpy", "train@torch", "evaluate", "track"}
    tried = files(origin, [*OUTPUTS, "dvc.lock", "params.yaml"])
    git(origin, "checkout", "--", "params.yaml", "dvc.lock", "metrics.json")
    dvc(origin, "checkout")
    return {"origin": origin, "push": make(origin, "push"), "committed": committed, "tried": tried}


def fresh_clone(pushed: dict, name: str) -> Path:
    """A git clone beside the pushing copy: its committed default remote is the same folder."""
    return clone(pushed["origin"], pushed["origin"].parent / name)


def files(repo: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in names}


def trained(repo: Path) -> list[str]:
    """The timing files train.py wrote in `repo`, one per variant it trained there (git-ignored, never pushed)."""
    return [path.name for path in (repo / "history").glob("*.timing.json")]


def test_make_push_sends_every_output_the_run_cache_records_metrics_json_included(pushed):
    done, storage = pushed["push"], pushed["origin"].parent / "gdpipe-storage"
    assert done.returncode == 0, done.stdout + done.stderr
    # dvc push --run-cache alone sends the run-cache's records and the committed result's 6 cached outputs:
    # neither the tried result's outputs nor the metrics.json DVC keeps for each record.
    objects = {
        hashlib.md5(result[name]).hexdigest()
        for result in (pushed["committed"], pushed["tried"])
        for name in [*CACHED, "metrics.json"]
    }
    for md5 in objects:
        assert (storage / "files" / "md5" / md5[:2] / md5[2:]).is_file(), md5
    records = list((storage / "runs").glob("*/*/*"))  # generate, and train@numpy, train@torch, evaluate twice
    assert len(records) == 7
    assert f"push: remote 'storage' ({storage}): {len(objects) + len(records)} files pushed" in done.stdout
    assert git(pushed["origin"], "status", "--porcelain") == ""  # the push's temporary .dvc file is gone


def test_make_push_still_sends_the_result_when_dvc_gc_removed_what_only_the_run_cache_names(
    own_reproduced_repo, tmp_path
):
    # dvc gc -w keeps the run-cache's records but removes the metrics.json copy that only evaluate's names.
    dvc(own_reproduced_repo, "gc", "--workspace", "--force")
    done = run_remote(own_reproduced_repo, "push")
    assert done.returncode == 0, done.stdout + done.stderr
    storage = tmp_path / "gdpipe-storage"
    assert done.stdout == f"push: remote 'storage' ({storage}): 10 files pushed\n"  # 6 outputs, 4 records


def test_make_pull_then_make_repro_trains_nothing_and_restores_every_output_byte_identical(pushed):
    storage = pushed["origin"].parent / "gdpipe-storage"
    fresh = fresh_clone(pushed, "pull-then-repro")
    pulled = make(fresh, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert f"pull: remote 'storage' ({storage}): " in pulled.stdout and "6 outputs checked out" in pulled.stdout
    repro = make(fresh, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    # Every cached stage is up to date; track runs, as on any fresh clone: its output, published.json, is
    # deliberately not cached (dvc.yaml), so the clone publishes to its own MLflow store.
    assert stages_run(repro.stdout) == {"track"}, repro.stdout
    assert files(fresh, [*OUTPUTS, "dvc.lock"]) == pushed["committed"]
    assert git(fresh, "status", "--porcelain") == "" and trained(fresh) == []

    # An output changed here is never overwritten: the pull stops in one line and leaves it as it is.
    (fresh / "models" / "numpy.json").write_text('{"w": 3.0}\n')
    before = workspace_bytes(fresh)
    done = run_remote(fresh, "pull")
    assert done.returncode == 2, done.stdout + done.stderr
    assert_one_error_line(done.stderr, f"remote 'storage' ({storage})", "models/numpy.json", "--force")
    assert workspace_bytes(fresh) == before


def test_dvc_repro_pull_on_a_fresh_clone_trains_nothing_and_leaves_git_clean(pushed):
    fresh = fresh_clone(pushed, "repro-pull")
    done = dvc(fresh, "repro", "--pull")
    # Every output is pulled, none made: not even published.json, as --pull takes an output it finds missing
    # for data to pull, and there is none for an uncached one; the next make repro publishes.
    assert stages_run(done.stdout) == set(), done.stdout
    assert "Some of the cache files do not exist" not in done.stdout + done.stderr
    assert files(fresh, [*CACHED, "metrics.json", "dvc.lock"]) == {
        name: pushed["committed"][name] for name in [*CACHED, "metrics.json", "dvc.lock"]
    }
    assert git(fresh, "status", "--porcelain") == "" and trained(fresh) == []


def test_dvc_repro_pull_brings_a_result_the_run_cache_records_training_nothing(pushed):
    """docs/remote.md: after make pull, set a train.lr a teammate pushed and run dvc repro --pull."""
    fresh = fresh_clone(pushed, "run-cache")
    assert make(fresh, "pull").returncode == 0
    write_yaml(fresh / "params.yaml", with_overrides(load_default_params(), TRIED))
    done = dvc(fresh, "repro", "--pull")
    assert stages_run(done.stdout) == {"track"}, done.stdout  # its params changed
    for name in ("train@numpy", "train@torch", "evaluate"):
        assert f"Stage '{name}' is cached - skipping run, checking out outputs" in done.stdout, done.stdout
    assert "Some of the cache files do not exist" not in done.stdout + done.stderr
    # The same files, dvc.lock included, as the copy that tried this learning rate had.
    assert files(fresh, [*OUTPUTS, "dvc.lock", "params.yaml"]) == pushed["tried"]
    assert trained(fresh) == []


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Path:
    """A copy of this project that has never run: dvc.lock names six outputs its cache does not have."""
    return copy_repo(tmp_path_factory.mktemp("fresh") / "repo")


@pytest.mark.parametrize(
    ("action", "url", "message"),
    [
        ("pull", "{tmp}/empty", "some of this result's files are not there: push them from the clone that made them"),
        ("pull", "{tmp}/nowhere", "no such folder: push there first (make push)"),
        ("push", "{tmp}/not-mounted/storage", "not-mounted does not exist (not mounted?)"),
    ],
    ids=["pull-missing-files", "pull-no-folder", "push-no-parent"],
)
def test_a_bad_local_remote_is_one_line_and_the_workspace_is_left_as_it_was(fresh_copy, tmp_path, action, url, message):
    (tmp_path / "empty").mkdir()
    url = url.format(tmp=tmp_path)
    set_remote(fresh_copy, url)
    (fresh_copy / "data" / "dataset.npy").write_bytes(b"a data set made here, not the committed one")
    before = workspace_bytes(fresh_copy)
    done = run_remote(fresh_copy, action)
    assert done.returncode == 2, done.stdout + done.stderr
    assert_one_error_line(done.stderr, f"remote 'mine' ({url})", message)
    assert workspace_bytes(fresh_copy) == before


def test_no_default_remote_is_one_line_that_says_how_to_add_one(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    dvc(repo, "remote", "default", "--unset")
    done = run_remote(repo, "push")
    assert done.returncode == 2
    assert_one_error_line(
        done.stderr, "no DVC remote is configured as the default", "dvc remote add --local -d NAME URL"
    )


# --- S3 ------------------------------------------------------------------------------------------
# No S3 server installs from the package registries these machines reach, and a test must not need a
# cloud account. moto's server mode answers S3's HTTP API on a local port, with IAM's access keys and
# signatures checked once its authentication is on; dvc-s3's own test suite runs against it, so DVC
# talks to it exactly as to S3.


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free 127.0.0.1 port, with the bucket and one user's access key; checks
    credentials from then on. Stopped after this module's tests."""
    import boto3
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    try:
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        setup |= {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}  # not checked until auth is on
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="gdpipe")
        allow_s3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="gdpipe", PolicyName="s3", PolicyDocument=json.dumps(allow_s3))
        key = iam.create_access_key(UserName="gdpipe")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        previous = set_auth(endpoint, "0")  # every request from now on is authenticated
        yield {"endpoint": endpoint, "id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        set_auth(endpoint, str(previous))
    finally:
        server.stop()


def set_auth(endpoint: str, unauthenticated_requests: str) -> float:
    """moto's /moto-api/reset-auth: how many requests pass before authentication starts; returns the old value."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=unauthenticated_requests.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]


def aws_env(**credentials: str) -> dict[str, str]:
    """src_env without the caller's AWS settings: only `credentials`, no config file, no instance metadata,
    and one attempt per request (botocore retries a refused connection for about 40 s)."""
    env = {key: value for key, value in src_env().items() if not key.startswith("AWS_")}
    isolated = {"AWS_CONFIG_FILE": "/nonexistent/config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials"}
    return env | isolated | {"AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"} | credentials


def test_push_to_s3_and_pull_back_with_a_credentials_file(s3, own_reproduced_repo, tmp_path):
    repo = own_reproduced_repo
    url = f"s3://{BUCKET}/round-trip"
    set_remote(repo, url, endpointurl=s3["endpoint"])
    done = run_remote(repo, "push", aws_env(AWS_ACCESS_KEY_ID=s3["id"], AWS_SECRET_ACCESS_KEY=s3["secret"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"push: remote 'mine' ({url}): 11 files pushed\n"  # 6 outputs, metrics.json, 4 records

    # Everything DVC has here goes; the pull brings it back with the key in a file DVC's credentialpath names.
    expected = {name: (repo / name).read_bytes() for name in OUTPUTS}
    for name in CACHED:
        (repo / name).unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {s3['id']}\naws_secret_access_key = {s3['secret']}\n")
    set_remote(repo, url, endpointurl=s3["endpoint"], credentialpath=str(credentials))
    # dvc-s3 passes credentialpath on only when AWS_SHARED_CREDENTIALS_FILE is unset (os.environ.setdefault).
    env = {key: value for key, value in aws_env().items() if key != "AWS_SHARED_CREDENTIALS_FILE"}
    done = run_remote(repo, "pull", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"pull: remote 'mine' ({url}): ") and "6 outputs checked out" in done.stdout
    assert {name: (repo / name).read_bytes() for name in OUTPUTS} == expected
    assert dvc(repo, "status", "--json").stdout.strip() == "{}"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong-secret", "the credentials were refused (Forbidden): check AWS_ACCESS_KEY_ID"),
        ("unknown-key", "the credentials were refused (Forbidden): check AWS_ACCESS_KEY_ID"),
        ("no-credentials", "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("no-such-bucket", "no such bucket: create it, or fix the url with `dvc remote modify --local mine url"),
        ("unreachable", "cannot connect to http://127.0.0.1:{port}: check the network, or the endpoint"),
    ],
)
def test_a_bad_s3_remote_is_one_line_naming_it_and_the_workspace_is_left_as_it_was(s3, fresh_copy, case, message):
    port = free_port()  # nothing listens there
    bucket = "no-such-bucket" if case == "no-such-bucket" else BUCKET
    url = f"s3://{bucket}/store"
    set_remote(fresh_copy, url, endpointurl=f"http://127.0.0.1:{port}" if case == "unreachable" else s3["endpoint"])
    credentials = {
        "wrong-secret": {"AWS_ACCESS_KEY_ID": s3["id"], "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        "unknown-key": {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN000000000", "AWS_SECRET_ACCESS_KEY": s3["secret"]},
        "no-credentials": {},
    }.get(case, {"AWS_ACCESS_KEY_ID": s3["id"], "AWS_SECRET_ACCESS_KEY": s3["secret"]})
    before = workspace_bytes(fresh_copy)
    done = run_remote(fresh_copy, "pull", aws_env(**credentials))
    assert done.returncode == 2, done.stdout + done.stderr
    assert_one_error_line(done.stderr, f"remote 'mine' ({url}): ", message.format(port=port))
    assert workspace_bytes(fresh_copy) == before
