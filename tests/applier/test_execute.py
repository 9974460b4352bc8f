"""Plan execution: failover in plan order, blocked placements, journal, dependencies, adoption."""

from __future__ import annotations

from pathlib import Path

from applier.actions import Env
from applier.execute import Executor, StalePlanError, check_fresh
from applier.providers.fake import FakeProvider, PlaceRule
from applier.refresh import recover_journal, refresh
from planner.diff import PlanInputs, make_plan
from planner.plan import Action
from reconciler.context import observed_from
from schema.repo import load_repo
from state import PlacementKey, open_store
from tests.planner.plan_helpers import MACHINE, catalog, write_repo

REPO = {
    "skyform.yaml": "infra: [aws/us-east-1]\npolicy: {prune: true}\n",
    "clusters/gpu.yaml": "resources: {accelerators: A10G:1, use_spot: true}\nrun: echo hi\n",
    "clusters/box.yaml": (
        "resources: {cpus: 2}\nrun: echo box\nskyform: {depends_on: [cluster.gpu]}\n"
    ),
}


def _plan(root: Path, store, blocked=()):  # type: ignore[no-untyped-def]
    desired = load_repo(root)
    meta = store.meta()
    return desired, make_plan(
        PlanInputs(
            desired=desired,
            observed=observed_from(store.list_resources()),
            catalog=catalog(),
            offerings=MACHINE,
            blocked=blocked,
            lineage=meta.lineage,
            serial=meta.serial,
        )
    )


def test_failover_follows_the_plan_order_and_blocks_full_places(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", REPO)
    aws = FakeProvider("aws")
    with open_store(None, tmp_path / "home") as store:
        desired, plan = _plan(root, store)
        gpu = plan.change("cluster.gpu")
        order = [gpu.placement, *gpu.failover]
        assert len(order) >= 3 and order[0] is not None and order[1] is not None
        for view in order[:2]:
            aws.fail_capacity(PlaceRule("aws", view.region, view.zone, view.instance_type))
        env = Env(home=tmp_path / "home", base_dir=root, providers={"aws": aws})
        result = Executor(plan, desired, store, env, plan_id="p1").run()
        assert result.ok, result.failed
        launched = [
            c.placement for c in aws.calls if c.verb == "launch" and c.address == "cluster.gpu"
        ]
        assert [(p.zone, p.instance_type) for p in launched] == [
            (v.zone, v.instance_type) for v in order[:3]
        ]
        assert [a.outcome for a in result.attempts["cluster.gpu"]] == ["capacity", "capacity", "ok"]
        record = store.get_resource("cluster.gpu")
        assert record is not None and record.placement is not None
        assert record.placement["instance_type"] == order[2].instance_type
        first = order[0]
        assert store.is_blocked(
            PlacementKey(first.cloud, first.region, first.zone, first.instance_type, True, "A10G:1")
        )
        # The dependent waited for its dependency, and both are recorded once.
        assert [c.address for c in aws.calls if c.verb == "launch"][-1] == "cluster.box"
        assert sorted(r.address for r in store.list_resources()) == ["cluster.box", "cluster.gpu"]
        assert store.incomplete_intents() == []


def test_exhausted_candidates_fail_with_every_attempt_and_skip_dependents(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", REPO)
    aws = FakeProvider("aws")
    aws.fail_capacity(PlaceRule("aws"))
    with open_store(None, tmp_path / "home") as store:
        desired, plan = _plan(root, store)
        env = Env(home=tmp_path / "home", base_dir=root, providers={"aws": aws})
        result = Executor(plan, desired, store, env, plan_id="p1").run()
        assert "no candidate placement had capacity" in result.failed["cluster.gpu"]
        n = 1 + len(plan.change("cluster.gpu").failover)
        assert len(result.attempts["cluster.gpu"]) == n
        assert result.skipped == {"cluster.box": "dependency cluster.gpu did not apply"}
        assert store.list_resources() == []
        assert [i.status for i in store.incomplete_intents()] == []


def test_drift_found_by_refresh_is_healed(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", REPO)
    aws = FakeProvider("aws")
    home = tmp_path / "home"
    with open_store(None, home) as store:
        desired, plan = _plan(root, store)
        env = Env(home=home, base_dir=root, providers={"aws": aws})
        assert Executor(plan, desired, store, env, plan_id="p1").run().ok
        gone = next(h for h in aws.resources() if h.address == "cluster.gpu")
        aws.terminate(gone)  # someone deletes it outside Skyform
        live = refresh(store.list_resources(), {"aws": aws})
        assert live["cluster.gpu"].status == "MISSING"
        again = make_plan(
            PlanInputs(
                desired=desired,
                observed=observed_from(store.list_resources(), live),
                catalog=catalog(),
                lineage=store.meta().lineage,
                serial=store.meta().serial,
            )
        )
        change = again.change("cluster.gpu")
        assert change.action == Action.CREATE and change.drift == "deleted outside Skyform"
        assert again.change("cluster.box").action == Action.NOOP
        assert Executor(again, desired, store, env, plan_id="p2").run().ok
        assert sorted(h.address for h in aws.resources()) == ["cluster.box", "cluster.gpu"]


def test_stale_saved_plan_is_refused(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", REPO)
    with open_store(None, tmp_path / "home") as store:
        desired, plan = _plan(root, store)
        env = Env(home=tmp_path / "home", base_dir=root, providers={"aws": FakeProvider("aws")})
        Executor(plan, desired, store, env, plan_id="p1").run()
        try:
            check_fresh(plan, store, None)
        except StalePlanError as exc:
            assert "state serial is" in str(exc) and "skyform plan" in str(exc)
        else:
            raise AssertionError("a plan made before the last apply must be stale")


def test_interrupted_create_is_adopted_not_duplicated(tmp_path: Path) -> None:
    """The journal entry written before launch lets the next apply adopt what was created."""
    root = write_repo(tmp_path / "repo", REPO)
    aws = FakeProvider("aws")
    home = tmp_path / "home"
    with open_store(None, home) as store:
        desired, plan = _plan(root, store)
        executor = Executor(plan, desired, store, Env(home, root, {"aws": aws}), plan_id="p1")
        executor.snapshot = {}
        job = executor._begin(plan.change("cluster.gpu"))
        executor._work(job)  # the provider call happened; then the process "died"
        assert store.get_resource("cluster.gpu") is None
        notes = recover_journal(store, home, {"aws": aws})
        assert notes == ["cluster.gpu: adopted what an interrupted apply created"]
        record = store.get_resource("cluster.gpu")
        assert record is not None and record.handles["skyform_id"] == job.skyform_id
        _, after = _plan(root, store)
        assert after.change("cluster.gpu").action == Action.NOOP
        assert len([h for h in aws.resources() if h.address == "cluster.gpu"]) == 1
