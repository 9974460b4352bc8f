"""skyform.yaml's Kubernetes settings (queue, image, schedule_timeout) reach the provider, per
context, through the registry; what cannot be one is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from applier.providers import registry
from applier.providers.kubernetes import KubernetesProvider
from applier.providers.kubernetes_api import contexts_from_settings
from reconciler.context import provider_settings
from schema.errors import SpecError
from schema.repo import load_repo
from tests.k8s_server.harness import Kube, request

SETTINGS = """\
infra:
  - infra: k8s/ctx-a
    queue: team-a
    image: ghcr.io/acme/trainer:1.2
    schedule_timeout: 500ms
  - k8s/ctx-b
"""


def _repo(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "skyform.yaml").write_text(text)
    return root


def test_queue_image_and_schedule_timeout_reach_the_pods_of_their_context(
    kube: Kube, tmp_path: Path
) -> None:
    desired = load_repo(_repo(tmp_path, SETTINGS))
    a, b = desired.config.infra
    assert (a.queue, a.image, a.schedule_timeout) == ("team-a", "ghcr.io/acme/trainer:1.2", 0.5)
    assert (b.queue, b.image, b.schedule_timeout) == (None, None, None)
    provider = registry.make_provider("kubernetes", kube.home, provider_settings(desired))
    assert isinstance(provider, KubernetesProvider)
    kube.made.append(provider)

    provider.launch(request("run: x\n", "ctx-a"))
    [pod] = kube.pods("ctx-a")
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/acme/trainer:1.2"

    provider.launch(request("run: x\n", "ctx-b"))
    [pod] = kube.pods("ctx-b")
    assert "kueue.x-k8s.io/queue-name" not in pod["metadata"]["labels"]
    assert pod["spec"]["containers"][0]["image"] == "python:3.11-slim"


def test_the_schedule_timeout_reaches_the_contexts_settings(tmp_path: Path) -> None:
    settings = provider_settings(load_repo(_repo(tmp_path, SETTINGS)))["kubernetes"]
    a, b = contexts_from_settings(settings)
    assert (a.context, a.schedule_timeout_s, a.queue) == ("ctx-a", 0.5, "team-a")
    assert (b.context, b.schedule_timeout_s, b.queue, b.image) == ("ctx-b", None, None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("infra:\n  - infra: aws\n    queue: q\n", "only apply to Kubernetes contexts"),
        ("infra:\n  - infra: k8s/ctx-a\n    schedule_timeout: soon\n", "expected a duration"),
        ("infra:\n  - infra: k8s/ctx-a\n    schedule_timeout: 0\n", "greater than 0"),
        ("infra:\n  - infra: k8s/ctx-a\n    image: ''\n", "must not be empty"),
        ("infra:\n  - infra: k8s/ctx-a\n    queue_name: q\n", "queue_name"),
    ],
)
def test_bad_kubernetes_settings_are_clear_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SpecError, match=expected):
        load_repo(_repo(tmp_path, text))
