"""Plan semantics per kind and action, against a real repo on disk and the shipped catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import planner.diff
from planner.placement_schema import optimize_task
from planner.plan import Action, Plan, from_json, to_json
from tests.planner.plan_helpers import applied, plan_repo, write_repo

BASE = {
    "skyform.yaml": "infra: [local, aws, gcp]\npolicy:\n  prune: true\n",
    "clusters/dev.yaml": (
        "resources:\n  infra: local\n  cpus: 2+\n  autostop: 30\n  labels: {team: a}\n"
        "envs:\n  MODE: dev\nsetup: echo setup\nrun: echo hi\n"
    ),
    "jobs/train.yaml": "resources:\n  accelerators: A100:8\nrun: python train.py\n",
    "services/api.yaml": (
        "resources:\n  infra: local\n  ports: 8080\nservice:\n  readiness_probe: /health\n"
        "  replicas: 2\nrun: python serve.py\n"
    ),
}


def _repo(tmp_path: Path, **changes: str | None) -> Path:
    files = dict(BASE)
    for rel, text in changes.items():
        key = rel.replace("__", "/").replace("_yaml", ".yaml")
        if text is None:
            files.pop(key)
        else:
            files[key] = text
    return write_repo(tmp_path, files)


def _actions(plan: Plan) -> dict[str, Action]:
    return {c.address: c.action for c in plan.changes}


def test_fresh_repo_creates_everything_with_placement_and_cost(tmp_path: Path) -> None:
    plan = plan_repo(_repo(tmp_path))
    assert _actions(plan) == {
        "cluster.dev": Action.CREATE,
        "job.train": Action.CREATE,
        "service.api": Action.CREATE,
    }
    train = plan.change("job.train")
    assert train.placement is not None and train.placement.accelerators == {"A100": 8}
    assert train.failover and train.failover[0].hourly_cost >= train.placement.hourly_cost
    api = plan.change("service.api")
    assert api.placement is not None and api.placement.cloud == "local"
    assert plan.cost.after == pytest.approx(sum(c.cost_after for c in plan.changes))
    assert plan.summary.create == 3 and plan.summary.changes
    assert not plan.errors


def test_applied_repo_is_a_noop(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    again = plan_repo(root, applied(plan_repo(root)))
    assert set(_actions(again).values()) == {Action.NOOP}
    assert not again.summary.changes and again.order == ()


def test_cluster_update_in_place_vs_replace(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    live = applied(plan_repo(root))
    dev = BASE["clusters/dev.yaml"]
    write_repo(root, {"clusters/dev.yaml": dev.replace("autostop: 30", "autostop: 60")})
    update = plan_repo(root, live).change("cluster.dev")
    assert update.action == Action.UPDATE
    assert [(d.path, d.before, d.after) for d in update.diffs] == [
        ("resources.autostop.idle_minutes", 30, 60)
    ]
    write_repo(root, {"clusters/dev.yaml": dev.replace("cpus: 2+", "cpus: 4+")})
    replace = plan_repo(root, live).change("cluster.dev")
    assert replace.action == Action.REPLACE
    assert replace.diffs[0].path == "resources.cpus" and replace.diffs[0].forces_replacement
    assert replace.reasons == ("resources.cpus forces replacement",)
    assert replace.interrupts == "replaces running cluster.dev"


def test_any_job_change_reruns_it_and_says_it_cancels_running_work(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    live = applied(plan_repo(root))
    write_repo(root, {"jobs/train.yaml": BASE["jobs/train.yaml"].replace("train.py", "t2.py")})
    plan = plan_repo(root, live)
    change = plan.change("job.train")
    assert change.action == Action.REPLACE
    assert change.reasons == ("a job is immutable: run changed, so it re-runs",)
    assert plan.summary.interrupts == ("cancels running job.train (running)",)


def test_finished_job_with_same_spec_is_a_noop(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    live = applied(plan_repo(root), changes={"job.train": {"status": "SUCCEEDED"}})
    plan = plan_repo(root, live)
    assert plan.change("job.train").action == Action.NOOP
    assert plan.change("job.train").cost_after == 0.0


def test_service_scale_is_in_place_and_spec_change_replaces(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    live = applied(plan_repo(root), changes={"service.api": {"ready_replicas": 2}})
    api = BASE["services/api.yaml"]
    write_repo(root, {"services/api.yaml": api.replace("replicas: 2", "replicas: 1")})
    scaled = plan_repo(root, live)
    assert scaled.change("service.api").action == Action.UPDATE
    assert scaled.summary.interrupts == ("scales service.api from 2 to 1 ready replicas",)
    write_repo(root, {"services/api.yaml": api.replace("serve.py", "serve2.py")})
    assert plan_repo(root, live).change("service.api").action == Action.REPLACE


def test_removed_file_is_deleted_only_when_prune_is_on(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    live = applied(plan_repo(root))
    (root / "jobs" / "train.yaml").unlink()
    plan = plan_repo(root, live)
    assert plan.change("job.train").action == Action.DELETE
    assert plan.order[-1] == "job.train"
    write_repo(root, {"skyform.yaml": "infra: [local, aws, gcp]\npolicy:\n  prune: false\n"})
    kept = plan_repo(root, live)
    assert kept.change("job.train").action == Action.NOOP
    assert kept.summary.orphaned == 1
    assert "policy.prune is off" in kept.change("job.train").reasons[0]


def test_protect_turns_a_delete_or_replace_into_an_error(tmp_path: Path) -> None:
    root = _repo(
        tmp_path, clusters__dev_yaml=BASE["clusters/dev.yaml"] + "skyform: {protect: true}\n"
    )
    live = applied(plan_repo(root))
    write_repo(
        root,
        {
            "clusters/dev.yaml": BASE["clusters/dev.yaml"].replace("2+", "4+")
            + "skyform: {protect: true}\n"
        },
    )
    plan = plan_repo(root, live)
    assert [f.address for f in plan.errors] == ["cluster.dev"]
    assert "protected and cannot be replaced" in plan.errors[0].message
    (root / "clusters" / "dev.yaml").unlink()
    gone = plan_repo(root, live)
    assert "protected and cannot be deleted" in gone.errors[0].message


def test_ignore_changes_hides_listed_fields(tmp_path: Path) -> None:
    dev = BASE["clusters/dev.yaml"] + "skyform:\n  ignore_changes: [envs, resources.labels]\n"
    root = _repo(tmp_path, clusters__dev_yaml=dev)
    live = applied(plan_repo(root))
    write_repo(
        root,
        {"clusters/dev.yaml": dev.replace("MODE: dev", "MODE: prod").replace("team: a", "team: b")},
    )
    assert plan_repo(root, live).change("cluster.dev").action == Action.NOOP


def test_drift_is_corrected_accepted_or_only_reported(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    live = applied(plan_repo(root), changes={"cluster.dev": {"status": "MISSING"}})
    change = plan_repo(root, live).change("cluster.dev")
    assert change.action == Action.CREATE and change.drift == "deleted outside Skyform"
    write_repo(root, {"skyform.yaml": "infra: [local, aws, gcp]\npolicy:\n  drift: alert\n"})
    alert = plan_repo(root, live).change("cluster.dev")
    assert alert.action == Action.NOOP and "policy.drift=alert" in alert.reasons[0]


def test_lifecycle_events_are_not_drift(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    live = applied(
        plan_repo(root),
        changes={"job.train": {"status": "RUNNING", "lifecycle": "preempted and recovered"}},
    )
    change = plan_repo(root, live).change("job.train")
    assert change.action == Action.NOOP and change.drift is None
    assert change.reasons == ("preempted and recovered (lifecycle, not drift)",)


def test_infeasible_placement_and_cost_policy_fail_the_plan(tmp_path: Path) -> None:
    root = _repo(
        tmp_path,
        jobs__big_yaml="resources:\n  accelerators: H100:8\n  infra: local\nrun: x\n",
        skyform_yaml="infra: [local, aws, gcp]\npolicy:\n  max_hourly_cost: 1\n",
    )
    plan = plan_repo(root)
    messages = [f.message for f in plan.errors]
    assert any(m.startswith("no feasible placement") for m in messages)
    assert any("over policy.max_hourly_cost $1.00/h" in m for m in messages)


def test_required_env_blocks_the_plan_until_given(tmp_path: Path) -> None:
    root = _repo(tmp_path, jobs__tok_yaml="envs:\n  HF_TOKEN:\nrun: x\nresources: {infra: local}\n")
    plan = plan_repo(root)
    assert plan.required_inputs == ("HF_TOKEN",) and plan.errors
    ok = plan_repo(root, env={"HF_TOKEN": "hf_secret_value"})
    assert not ok.errors
    assert "hf_secret_value" not in to_json(ok)


def test_secrets_never_appear_but_rotation_is_a_change(tmp_path: Path) -> None:
    job = "secrets:\n  API_KEY: sk-one\nrun: x\nresources: {infra: local}\n"
    root = _repo(tmp_path, jobs__s_yaml=job)
    first = plan_repo(root)
    assert "sk-one" not in to_json(first)
    write_repo(root, {"jobs/s.yaml": job.replace("sk-one", "sk-two")})
    rotated = plan_repo(root, applied(first))
    assert rotated.change("job.s").action == Action.REPLACE
    assert "sk-two" not in to_json(rotated) and "sk-one" not in to_json(rotated)


def test_dependency_order_and_target(tmp_path: Path) -> None:
    root = _repo(
        tmp_path,
        jobs__train_yaml=(
            "resources: {infra: local}\nrun: x\nskyform: {depends_on: [cluster.dev]}\n"
        ),
        services__api_yaml=BASE["services/api.yaml"] + "skyform: {depends_on: [job.train]}\n",
    )
    plan = plan_repo(root)
    assert plan.order == ("cluster.dev", "job.train", "service.api")
    targeted = plan_repo(root, targets=("job.train",))
    assert [c.address for c in targeted.changes] == ["cluster.dev", "job.train"]


def test_json_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    first, second = to_json(plan_repo(root)), to_json(plan_repo(root))
    assert first == second
    assert to_json(from_json(first)) == first


def test_each_plan_optimizes_each_resource_shape_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str | None] = []

    def counting(task: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(task.name)
        return optimize_task(task, *args, **kwargs)

    monkeypatch.setattr(planner.diff, "optimize_task", counting)
    root = _repo(tmp_path, clusters__dev2_yaml=BASE["clusters/dev.yaml"])
    for _ in range(2):  # nothing carries over from one plan to the next
        calls.clear()
        plan = plan_repo(root)
        assert len(plan.changes) == 4 and plan.change("cluster.dev2").placement is not None
        assert len(calls) == 3, calls  # cluster.dev and cluster.dev2 share one shape
