"""Train a reference model: ``python -m pipeline.train train=lstm train.embed_size=128``.

The model and its tokenizer are saved to ``out`` (default ``${paths.stores}/_models/<train.name>``) and load
through the extraction stage like any hub model: ``python -m pipeline.extract model.name_or_path=<out> ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .extraction.config import run_spec_from_dict
from .training.config import train_spec_from_dict

log = logging.getLogger(__name__)


def run(cfg: dict) -> Path:
    from .training.run import train

    spec = train_spec_from_dict(dict(cfg["train"]))
    dataset = run_spec_from_dict({"model": {"name_or_path": "unused"}, "dataset": cfg["dataset"],
                                  "extract": {}, "paths": cfg.get("paths")}).dataset
    out = Path(cfg.get("out") or Path(cfg["paths"]["stores"]) / "_models" / spec.name)
    return train(spec, dataset, out, overwrite=bool(cfg.get("overwrite", False)), resolved=cfg,
                 progress=bool(cfg.get("progress", True)))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    out = run(OmegaConf.to_container(cfg, resolve=True))
    print(f"model saved to {out}")


if __name__ == "__main__":
    main()
