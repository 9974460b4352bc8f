"""Conformance: intent journal, plan/apply history and events, on every backend."""

from __future__ import annotations

from typing import Any

import pytest

from state import Resource, StateError, Store


def test_an_intent_is_pending_until_completed_or_failed(store: Store, clock: Any) -> None:
    started = clock.now
    store.record_intent("k1", "job.a", "create", {"infra": "aws"}, plan_id="p1")
    clock.advance(1)
    store.record_intent("k2", "job.b", "delete")
    assert [(i.key, i.status, i.plan_id) for i in store.incomplete_intents()] == [
        ("k1", "pending", "p1"),
        ("k2", "pending", None),
    ]
    clock.advance(1)
    done = store.complete_intent("k1", {"instance_id": "i-1"})
    assert (done.status, done.result, done.created_at, done.finished_at) == (
        "completed",
        {"instance_id": "i-1"},
        started,
        clock.now,
    )
    failed = store.fail_intent("k2", "quota exceeded")
    assert (failed.status, failed.error) == ("failed", "quota exceeded")
    assert store.incomplete_intents() == []
    assert store.get_intent("k1") == done


def test_recording_the_same_key_again_returns_the_first_row(store: Store) -> None:
    first = store.record_intent("k1", "job.a", "create", {"n": 1})
    store.complete_intent("k1")
    again = store.record_intent("k1", "job.a", "create", {"n": 2})
    assert again.status == "completed"
    assert again.payload == first.payload == {"n": 1}


def test_a_key_reused_for_another_call_is_refused(store: Store) -> None:
    store.record_intent("k1", "job.a", "create")
    with pytest.raises(StateError, match="unique"):
        store.record_intent("k1", "job.b", "create")


def test_closing_an_unknown_intent_is_an_error(store: Store) -> None:
    with pytest.raises(StateError, match="no intent"):
        store.complete_intent("nope")
    with pytest.raises(StateError, match="no intent"):
        store.fail_intent("nope", "x")


def test_intents_do_not_move_the_serial(store: Store) -> None:
    store.record_intent("k1", "job.a", "create")
    store.complete_intent("k1")
    assert store.meta().serial == 0


def test_a_run_records_who_what_and_the_serials_around_it(store: Store, clock: Any) -> None:
    run = store.begin_run("apply", "alice", commit="abc123", plan_id="p1")
    assert (run.outcome, run.serial_before, run.finished_at) == ("running", 0, None)
    store.put_resource(Resource("job.a", "job", "h"))
    clock.advance(5)
    done = store.finish_run(run.id, "succeeded", "1 created")
    assert (done.outcome, done.message, done.serial_after, done.finished_at) == (
        "succeeded",
        "1 created",
        1,
        clock.now,
    )
    assert (done.who, done.commit, done.plan_id) == ("alice", "abc123", "p1")


def test_history_is_newest_first_and_limited(store: Store) -> None:
    ids = [store.begin_run("plan", f"user{n}").id for n in range(5)]
    assert [r.id for r in store.history()] == ids[::-1]
    assert [r.id for r in store.history(limit=2)] == ids[:-3:-1]


def test_finishing_an_unknown_run_is_an_error(store: Store) -> None:
    with pytest.raises(StateError, match="no run"):
        store.finish_run(999, "failed")


def test_events_are_kept_per_address_newest_first(store: Store, clock: Any) -> None:
    store.add_event("job.a", "preempted", "spot node reclaimed")
    clock.advance(1)
    store.add_event("job.b", "created", "launched")
    clock.advance(1)
    last = store.add_event("job.a", "recovered", "relaunched in us-west-2")
    assert [e.kind for e in store.events("job.a")] == ["recovered", "preempted"]
    assert store.events()[0] == last
    assert last.at == clock.now
    assert len(store.events(limit=2)) == 2
