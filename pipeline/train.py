"""Train a reference model: ``python -m pipeline.train train=lstm train.embed_size=128``.

The model and its tokenizer are saved to ``out`` (default ``${paths.stores}/_models/<train.name>``) and load
through the extraction stage like any hub model: ``python -m pipeline.extract model.name_or_path=<out> ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import rundir
from .cli import exit_on_errors, report_errors
from .extraction.config import run_spec_from_dict
from .training.config import train_spec_from_dict

log = logging.getLogger(__name__)


def run(cfg: dict) -> Path:
    # the settings are checked before torch and transformers load (seconds)
    spec = train_spec_from_dict(dict(cfg["train"]))
    dataset = run_spec_from_dict({"model": {"name_or_path": "unused"}, "dataset": cfg["dataset"],
                                  "extract": {}, "paths": cfg.get("paths")}).dataset
    from .training.run import train

    out = Path(cfg.get("out") or Path(cfg["paths"]["stores"]) / "_models" / spec.name)
    return train(spec, dataset, out, overwrite=bool(cfg.get("overwrite", False)), resolved=cfg,
                 progress=bool(cfg.get("progress", True)))


rundir.register()  # ${run_id:} in hydra.run.dir: every run its own directory


@exit_on_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_errors  # a project error: one line on stderr, exit status 1 (HYDRA_FULL_ERROR=1: the traceback)
def main(cfg: DictConfig) -> None:
    run(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
