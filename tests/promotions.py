"""Promotions that race, for the registry's tests on sqlite (integration/test_registry.py) and on the team
server (integration/test_team_server.py): results to promote, promoters started at once, and the check that
both champions are of one result and every promoter said the truth."""

from __future__ import annotations

from support import VARIANTS


class FirstWritesTogether:
    """A client that, after its first write to the store, waits until every other promoter of the round has
    made its first write too: every promotion has begun before any of them goes on (a barrier of `threading`)."""

    def __init__(self, client, barrier):
        self.client, self.barrier, self.waited = client, barrier, False

    def __getattr__(self, name):
        call = getattr(self.client, name)
        if self.waited or not name.startswith(("set_", "delete_", "create_")):
            return call

        def write(*args, **kwargs):
            done = call(*args, **kwargs)
            if not self.waited:
                self.waited = True
                self.barrier.wait(timeout=120)
            return done

        return write


def make_results(client, prefix: str, count: int) -> list[dict[str, str]]:
    """`count` results, each one new version of `<prefix>-numpy` and of `<prefix>-torch` (registered here,
    of an empty run): name -> version. The torch versions are made in the reverse order, so that result i
    is not version i of both."""
    names = [f"{prefix}-{variant}" for variant in VARIANTS]
    for name in names:
        client.create_registered_model(name)
    experiment = client.create_experiment(f"{prefix}-results")

    def version(name: str) -> str:
        run = client.create_run(experiment).info.run_id  # a server takes a version's source from a run only
        return client.create_model_version(name, f"runs:/{run}/model", run_id=run).version

    numpy = [version(names[0]) for _ in range(count)]
    torch = [version(names[1]) for _ in range(count)][::-1]
    return [{names[0]: str(a), names[1]: str(b)} for a, b in zip(numpy, torch, strict=True)]


def promote_at_once(clients, results: list[dict[str, str]], together: bool) -> list[tuple[list[str], bool]]:
    """`champion.promote` of each result (one per client, a passed gate), all in threads started at
    once: what each returned. `together`: each waits after its first write for all the others'."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from gdpipe.track.champion import promote

    start = threading.Barrier(len(results))
    passed = {"passed": True, "failed": []}

    def promoter(index: int) -> tuple[list[str], bool]:
        client = FirstWritesTogether(clients[index], start) if together else clients[index]
        current = {
            name.rsplit("-", 1)[1]: {"model_name": name, "model_version": version, "status": "trained"}
            for name, version in results[index].items()
        }
        if not together:
            start.wait(timeout=120)
        return promote(client, current, passed)

    with ThreadPoolExecutor(len(results)) as pool:
        return list(pool.map(promoter, range(len(results))))  # list(): raises what a promoter raised


def champions(client, names) -> dict[str, str | None]:
    """Each model's `champion` alias, as the store holds it now."""
    from mlflow.exceptions import MlflowException

    held = {}
    for name in names:
        try:
            held[name] = str(client.get_model_version_by_alias(name, "champion").version)
        except MlflowException:
            held[name] = None
    return held


def assert_one_champion_per_round(client, results, rounds: int, promoters: int, together: bool) -> None:
    """`rounds` rounds of `promoters` promotions of different results at once: after each, both
    champions are versions of one of them, and what every promoter said is true: the one whose result
    is champion says so, and exits 0 (True); every other one names the champion it saw win (with
    `together`, all promoters wrote before any looked: that is the final one) and exits 1 (False), or,
    started freely, may have ended before the winner began to write and said its own was champion."""
    names = list(results[0])
    for turn in range(rounds):
        mine = [results[(turn + index) % len(results)] for index in range(promoters)]
        said = promote_at_once([client] * promoters, mine, together)
        final = champions(client, names)
        assert final in mine, f"round {turn}: the champions {final} are not one result of {mine}: {said}"
        winner = mine.index(final)
        won = [f"{name}: version {final[name]} is champion (" for name in names]
        assert said[winner][1] and len(said[winner][0]) == 2 and all(map(str.startswith, said[winner][0], won)), said
        for index, (lines, promoted) in enumerate(said):
            if index == winner:
                continue
            seen = [final] if together else [result for result in mine if result is not mine[index]]
            lost = [
                [
                    f"{name}: version {result[name]} is champion (another promotion at the same time won); "
                    f"version {mine[index][name]} was promoted, then replaced"
                    for name in names
                ]
                for result in seen
            ]
            own = [f"{name}: version {mine[index][name]} is champion (" for name in names]
            ended_first = not together and promoted and all(map(str.startswith, lines, own)) and len(lines) == 2
            assert (not promoted and lines in lost) or ended_first, f"round {turn}: {said}"
