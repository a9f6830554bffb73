"""Where a pair's analysis runs (DESIGN.md section 9).

``local`` (the default): `analysis.PairData` holds the pair's per-position arrays in memory (~57 B per position)
and the kernels run over them. ``dask``: `analysis.engines.dask.DaskEngine` runs the same kernels one task per
chunk group, each task reading its range from the stores, so stores larger than memory are analysed with the
memory of a few chunk groups; the block sums come back and are reduced in block order, so results equal the
local engine's bit for bit. Choose with ``Pair(a, b, engine="dask", client=...)`` or ``analysis.engine=dask`` on
the CLIs.
"""

from __future__ import annotations

from ..errors import AnalysisError, SettingsError

ENGINES = ("local", "dask")


class EngineNotSupportedError(AnalysisError, NotImplementedError):
    """An analysis that the chosen engine does not run (e.g. the bootstrap on the dask engine, which needs every
    position's arrays in memory)."""


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise SettingsError(f"analysis engine {name!r} is not one of {list(ENGINES)}; use 'local' (in memory) or "
                            "'dask' (stores larger than memory, or a cluster)")
    return name


__all__ = ["ENGINES", "EngineNotSupportedError", "check_engine"]
