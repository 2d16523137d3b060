"""A torchrun entry point for tests/test_distributed.py (not a test module).

Each process calls the public ``adapt()`` (which joins the process group torchrun describes) and
saves the networks it ends with, so the test can compare processes with each other and with a
one-process run. Usage: ``torchrun ... dist_worker.py SOURCE TARGET OUT DUMP_DIR CONFIG_JSON [PLUGIN]``,
where PLUGIN is a Python file to run first (it registers a method of its own).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import torch

from stvm_sdk import AdaptConfig, adapt


def main(source: str, target: str, out: str, dump: str, config: str, plugin: str | None = None) -> None:
    if plugin is not None:
        runpy.run_path(plugin)  # not as __main__: the file only defines and registers its method
    cfg = AdaptConfig.from_dict(json.loads(Path(config).read_text()))
    result = adapt(source, target, config=cfg, out_dir=out, progress=False)
    assert result.teacher is not None
    state = {
        "student": result.student.module.state_dict(),
        "teacher": result.teacher.module.state_dict(),
    }
    if "metric" in result.extras:
        state["metric"] = result.extras["metric"].state_dict()  # includes the proxies
    torch.save(state, Path(dump) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
