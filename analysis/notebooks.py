"""Execute the notebooks headless on a stores directory: ``python -m analysis.notebooks`` (``make notebooks``).

  python -m analysis.notebooks [--stores DIR] [--out DIR] [NOTEBOOK ...]

Each notebook runs top to bottom in a fresh kernel with ``ARCACHE_STORES=DIR`` (default: $ARCACHE_STORES or
stores/) and the Agg matplotlib backend; the executed copy, outputs and figures included, is written to
``--out`` (default ``DIR/_runs/notebooks/``). The notebooks in git stay stripped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .errors import AnalysisError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


class NotebookError(AnalysisError):
    """A notebook raised an error while it ran (the executed copy with the traceback is written anyway)."""


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def execute_notebook(path, stores, out_dir, timeout: int = 600) -> Path:
    """Run one notebook on ``stores``; write the executed copy to ``out_dir``; return its path.

    Raises NotebookError naming the failing cell (the copy written holds the full traceback)."""
    import nbclient
    import nbformat
    from jupyter_client.manager import KernelManager

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    nb = nbformat.read(path, as_version=4)
    env = {"ARCACHE_STORES": str(Path(stores).resolve()), "MPLBACKEND": "Agg"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    # a local kernel over IPC sockets in a temporary directory: no TCP ports, no "without encryption" warning
    sockets = tempfile.TemporaryDirectory(prefix="arcache-kernel-")
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets.name) / "kernel"))
    try:
        client = nbclient.NotebookClient(nb, km=km, timeout=timeout,
                                         resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        nbformat.write(nb, out)
        cell = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                     and any(o.output_type == "error" for o in c.get("outputs", []))), None)
        raise NotebookError(f"{path.name}: cell {cell} raised {e.ename}: {e.evalue}; the executed copy with the "
                            f"traceback is {out}") from None
    finally:
        if km.has_kernel and km.is_alive():
            km.shutdown_kernel()
        sockets.cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    nbformat.write(nb, out)
    return out


def main(argv=None) -> int:
    from pipeline.cli import one_line_errors

    parser = argparse.ArgumentParser(prog="python -m analysis.notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default=os.environ.get("ARCACHE_STORES", "stores"))
    parser.add_argument("--out", default=None, help="where the executed copies go (default STORES/_runs/notebooks)")
    parser.add_argument("paths", nargs="*", help="notebooks to run (default: every notebooks/*.ipynb)")
    args = parser.parse_args(argv)

    @one_line_errors
    def run() -> int:
        stores = Path(args.stores)
        if not stores.is_dir():
            raise NotebookError(f"--stores {stores} is not a directory; run `make demo` first or pass the "
                                "directory that holds your stores")
        out = Path(args.out) if args.out else stores / "_runs" / "notebooks"
        for path in [Path(p) for p in args.paths] or notebooks():
            print(f"executed {execute_notebook(path, stores, out)}", flush=True)
        print(f"the executed notebooks (outputs and figures included) are in {out}/")
        return 0

    return run()


if __name__ == "__main__":
    sys.exit(main())
