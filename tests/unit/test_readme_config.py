"""README's configuration examples load as they are shown (a pasted example must not fail at start)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.config import load_config

README = Path(__file__).resolve().parents[2] / "README.md"


def _yaml_block_after(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    found = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert found is not None, f"no yaml block after {heading}"
    return found.group(1)


@pytest.mark.parametrize(
    "heading",
    [
        "## Configuration",
        "## Service graphs",
        "## Tempo mode (`metrics_generator:`)",
        "## Remote write (`remote_write:`)",
    ],
)
def test_readme_yaml_examples_load(heading: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_yaml_block_after(heading), encoding="utf-8")
    settings = load_config(path)
    if heading == "## Tempo mode (`metrics_generator:`)":
        assert settings.metrics_generator is not None
    elif heading == "## Remote write (`remote_write:`)":
        assert settings.remote_write is not None
        assert settings.remote_write.url == "http://prometheus:9090/api/v1/write"
    elif heading == "## Service graphs":
        assert settings.servicegraphs.enabled
    else:
        assert [d.glob for d in settings.spanmetrics.dimensions if d.glob] == ["app.*"]
