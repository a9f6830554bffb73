"""Extraction entry point: one model x one dataset split -> one complete, validated store.

    python -m pipeline.extract model=gpt2-large dataset=wikitext2
    python -m pipeline.extract model.name_or_path=DIR_OR_ID dataset=text_file dataset.path=FILE \
        extract.top_k=K extract.context_length=L extract.stride=S store=OUT.zarr
    python -m pipeline.extract -m model=gpt2,gpt2-medium dataset=wikitext2,wikitext103

The config becomes typed frozen dataclasses here; library code never sees a DictConfig.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline import rundir
from pipeline.cli import exit_on_errors, report_errors
from pipeline.extraction.config import run_spec_from_dict

log = logging.getLogger("pipeline.extract")


def run(cfg: DictConfig):
    """Resolve the config, run the extraction, return the complete Store."""
    from pipeline.extraction.run import extract  # torch/transformers imported only when running

    spec = run_spec_from_dict(OmegaConf.to_container(cfg, resolve=True))
    return extract(spec)


rundir.register()  # ${run_id:} in hydra.run.dir: every run its own directory


@exit_on_errors
@hydra.main(version_base="1.3", config_path="../conf", config_name="extract")
@report_errors  # a project error: one line on stderr, exit status 1 (HYDRA_FULL_ERROR=1: the traceback)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
