"""The load balancer against real replica servers on loopback: policies, forwarding, streaming,
retries on dead replicas, 503s, runtime replica changes and clean shutdown."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections import Counter

import pytest

from applier.serve.lb import LoadBalancer
from applier.serve.policies import LeastLoad, RoundRobin

WAIT = 10.0


def test_round_robin_spreads_evenly(make_replica, make_lb, fetch):
    replicas = [make_replica() for _ in range(3)]
    lb = make_lb(replicas, policy="round_robin")
    served = Counter(fetch(lb).json()["replica"] for _ in range(30))
    assert served == {r.name: 10 for r in replicas}


def test_least_load_is_the_default_and_spreads_idle_requests(make_replica, make_lb, fetch):
    replicas = [make_replica() for _ in range(2)]
    lb = make_lb(replicas)
    assert isinstance(lb.policy, LeastLoad)
    served = Counter(fetch(lb).json()["replica"] for _ in range(10))
    assert served == {r.name: 5 for r in replicas}


def test_least_load_prefers_the_idle_replica_while_one_is_busy(make_replica, make_lb, fetch):
    replicas = [make_replica() for _ in range(2)]
    lb = make_lb(replicas, policy="least_load")
    slow: list[int] = []
    blocked = threading.Thread(target=lambda: slow.append(fetch(lb, path="/block").status))
    blocked.start()
    busy = _first_entered(replicas)
    idle = next(r for r in replicas if r is not busy)
    try:
        served = Counter(fetch(lb).json()["replica"] for _ in range(8))
    finally:
        for r in replicas:
            r.gate.set()
        blocked.join(WAIT)
    assert served == {idle.name: 8}
    assert slow == [200]
    # The client has its answer a moment before the balancer books the request as done.
    assert _eventually(lambda: lb.policy.load(busy.url) == 0)


def _eventually(predicate) -> bool:
    for _ in range(1000):
        if predicate():
            return True
        threading.Event().wait(0.01)
    return False


def _first_entered(replicas):
    for _ in range(1000):
        for r in replicas:
            if r.entered.wait(0.01):
                return r
    raise AssertionError("the blocking request reached no replica")


def test_post_body_query_and_headers_are_forwarded(make_replica, make_lb, fetch):
    replica = make_replica()
    lb = make_lb([replica])
    headers = {
        "X-Request-Id": "abc-123",
        "Authorization": "Bearer t0ken",
        "Content-Type": "application/json",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "must not pass",
        "Keep-Alive": "timeout=5",
    }
    body = json.dumps({"prompt": "hello", "max_tokens": 8}).encode()
    reply = fetch(lb, "POST", "/v1/completions?stream=false&n=2", body=body, headers=headers)
    assert reply.status == 200
    echo = reply.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/v1/completions?stream=false&n=2"
    assert echo["body"].encode() == body
    got = {k.lower(): v for k, v in echo["headers"]}
    assert got["x-request-id"] == "abc-123"
    assert got["authorization"] == "Bearer t0ken"
    assert got["content-type"] == "application/json"
    assert got["content-length"] == str(len(body))
    assert got["host"] == f"127.0.0.1:{lb.port}"
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert "x-hop" not in got and "keep-alive" not in got


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_is_forwarded(make_replica, make_lb, fetch, method):
    replica = make_replica()
    lb = make_lb([replica])
    reply = fetch(lb, method, "/items/7", body=b"x" if method != "OPTIONS" else None)
    assert reply.status == 200
    assert reply.json()["method"] == method
    assert replica.seen[-1].method == method


def test_head_gets_headers_and_no_body(make_replica, make_lb, fetch):
    lb = make_lb([make_replica()])
    reply = fetch(lb, "HEAD", "/")
    assert reply.status == 200 and reply.body == b""


def test_chunked_request_body_reaches_the_replica_whole(make_replica, make_lb):
    replica = make_replica()
    lb = make_lb([replica])
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=WAIT)
    try:
        conn.request(
            "POST", "/upload", body=iter([b"part one, ", b"part two"]), encode_chunked=True
        )
        reply = conn.getresponse()
        assert reply.status == 200
        reply.read()
    finally:
        conn.close()
    assert replica.seen[-1].body == b"part one, part two"


def test_replica_status_codes_pass_through(make_replica, make_lb, fetch):
    lb = make_lb([make_replica()])
    assert fetch(lb, path="/status/404").status == 404
    assert fetch(lb, path="/status/500").status == 500


def test_keep_alive_client_connection_serves_many_requests(make_replica, make_lb, fetch):
    replicas = [make_replica() for _ in range(2)]
    lb = make_lb(replicas, policy="round_robin")
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=WAIT)
    try:
        served = Counter(fetch(lb, path="/x", conn=conn).json()["replica"] for _ in range(6))
    finally:
        conn.close()
    assert served == {r.name: 3 for r in replicas}


def test_connections_to_a_replica_are_reused(make_replica, make_lb, fetch):
    replica = make_replica()
    lb = make_lb([replica])
    for _ in range(5):
        assert fetch(lb).status == 200
    assert len({seen.peer_port for seen in replica.seen}) == 1


@pytest.mark.parametrize("path", ["/stream", "/stream-close"])
def test_streaming_response_passes_through_chunk_by_chunk(make_replica, make_lb, path):
    replica = make_replica()
    lb = make_lb([replica])
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=WAIT)
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream"})
        reply = conn.getresponse()
        assert reply.status == 200
        assert reply.getheader("Content-Type") == "text/event-stream"
        events = []
        for step in replica.stream_steps:
            # The replica sends the next event only after this one arrived here: a balancer
            # that buffered the response would time out on this read.
            line = reply.readline()
            assert reply.readline() == b"\n"
            events.append(line)
            step.set()
        assert reply.read() == b""
    finally:
        conn.close()
    assert events == [f"data: event {i}\n".encode() for i in range(3)]


def test_no_ready_replicas_answers_503_with_a_clear_body(make_lb, fetch):
    lb = make_lb([])
    reply = fetch(lb, path="/anything")
    assert reply.status == 503
    assert b"No ready replicas" in reply.body


def test_dead_replica_is_retried_on_another(make_replica, make_lb, fetch):
    replicas = [make_replica() for _ in range(3)]
    lb = make_lb(replicas, policy="round_robin")
    replicas[0].stop()
    replicas[1].stop()
    replies = [fetch(lb) for _ in range(12)]
    assert [r.status for r in replies] == [200] * 12
    assert {r.json()["replica"] for r in replies} == {replicas[2].name}


def test_replica_killed_mid_run_costs_no_client_error(make_replica, make_lb, fetch):
    replicas = [make_replica() for _ in range(2)]
    lb = make_lb(replicas, policy="least_load")
    before = [fetch(lb) for _ in range(4)]
    replicas[0].stop()
    after = [fetch(lb) for _ in range(8)]
    assert [r.status for r in before + after] == [200] * 12
    assert {r.json()["replica"] for r in after} == {replicas[1].name}


def test_replica_hanging_up_without_answer_is_retried(make_replica, make_lb, fetch):
    crashing = make_replica(mode="crash")
    healthy = make_replica()
    lb = make_lb([crashing, healthy], policy="round_robin")
    replies = [fetch(lb, "POST", "/generate", body=b"{}") for _ in range(6)]
    assert [r.status for r in replies] == [200] * 6
    assert crashing.hits >= 1  # it really was tried, and the request went on to the other
    assert healthy.hits == 6


def test_all_replicas_dead_answers_503_after_the_attempts(make_replica, make_lb, fetch):
    replicas = [make_replica(mode="crash") for _ in range(4)]
    lb = make_lb(replicas)
    reply = fetch(lb)
    assert reply.status == 503
    assert b"after 3 attempt(s)" in reply.body
    assert sum(r.hits for r in replicas) == 3


def test_set_replicas_takes_effect_at_runtime(make_replica, make_lb, fetch):
    a, b = make_replica(), make_replica()
    lb = make_lb([a])
    assert {fetch(lb).json()["replica"] for _ in range(3)} == {a.name}
    lb.set_replicas([b.url])
    assert lb.replicas == [b.url]
    assert {fetch(lb).json()["replica"] for _ in range(3)} == {b.name}
    lb.set_replicas([])
    assert fetch(lb).status == 503


def test_request_timestamps_feed_the_autoscaler_window(make_replica, make_lb, fetch):
    now = [1000.0]
    lb = make_lb([make_replica()], clock=lambda: now[0])
    for _ in range(5):
        fetch(lb)
    assert lb.request_timestamps() == [1000.0] * 5
    now[0] += 61
    assert lb.request_timestamps() == []
    fetch(lb)
    fetch(lb)
    assert lb.drain_request_timestamps() == [1061.0, 1061.0]
    assert lb.drain_request_timestamps() == []


def test_bad_request_line_gets_400(make_lb):
    lb = make_lb([])
    with socket.create_connection(("127.0.0.1", lb.port), timeout=WAIT) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 400 ")


def test_stop_closes_the_port_and_ends_the_thread(make_replica):
    lb = LoadBalancer(policy=RoundRobin()).start()
    lb.set_replicas([make_replica().url])
    port = lb.port
    assert port != 0 and lb.running
    lb.stop()
    lb.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    assert not lb.running


def test_stop_during_a_streaming_response_does_not_hang(make_replica):
    replica = make_replica()
    lb = LoadBalancer().start()
    lb.set_replicas([replica.url])
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=WAIT)
    try:
        conn.request("GET", "/stream")
        reply = conn.getresponse()
        assert reply.readline() == b"data: event 0\n"
        lb.stop()
        with pytest.raises((http.client.IncompleteRead, OSError)):
            reply.read()
    finally:
        conn.close()


def test_a_taken_port_fails_start(make_lb):
    first = make_lb([])
    with pytest.raises(OSError):
        LoadBalancer(port=first.port).start()


def test_unknown_policy_and_bad_urls_are_refused():
    with pytest.raises(ValueError, match="round_robin"):
        LoadBalancer(policy="random")
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        LoadBalancer().set_replicas(["ftp://127.0.0.1:21"])


def test_replica_killed_with_a_request_in_flight_is_retried(make_replica, make_lb, fetch):
    replicas = [make_replica() for _ in range(2)]
    lb = make_lb(replicas, policy="least_load")
    replies = []
    client = threading.Thread(target=lambda: replies.append(fetch(lb, "POST", "/block", b"q")))
    client.start()
    victim = _first_entered(replicas)
    survivor = next(r for r in replicas if r is not victim)
    survivor.gate.set()
    victim.stop()
    client.join(WAIT)
    assert [r.status for r in replies] == [200]
    assert replies[0].json()["replica"] == survivor.name
    assert replies[0].json()["body"] == "q"


def test_a_replica_silent_past_the_stream_timeout_gets_504(make_replica, make_lb, fetch):
    replica = make_replica()
    lb = make_lb([replica], stream_timeout_seconds=0.2)
    try:
        reply = fetch(lb, path="/block")
    finally:
        replica.gate.set()
    assert reply.status == 504
    assert replica.hits == 1  # not retried: the replica may still be working on it


def _raw(lb, data: bytes, then: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", lb.port), timeout=WAIT) as s:
        s.sendall(data)
        if then:
            assert s.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(then)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_expect_100_continue_is_answered_by_the_balancer(make_replica, make_lb):
    replica = make_replica()
    lb = make_lb([replica])
    head = (
        b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    out = _raw(lb, head, then=b"hello")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert replica.seen[-1].body == b"hello"
    assert "expect" not in {k.lower() for k, _ in replica.seen[-1].headers}


def test_http10_client_gets_a_streamed_body_unchunked(make_replica, make_lb):
    replica = make_replica()
    for step in replica.stream_steps:
        step.set()
    lb = make_lb([replica])
    out = _raw(lb, b"GET /stream HTTP/1.0\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"".join(f"data: event {i}\n\n".encode() for i in range(3))
