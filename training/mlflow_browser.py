"""Look at an evaluation in MLflow's own UI with headless Chromium: the runs table as DOM text and PNG.

``python -m defialloc.training.mlflow_browser --ui http://127.0.0.1:5000 [--experiment NAME] [--run-id ID]
--out shot.png`` opens the saved comparison view of an evaluation (its policy runs, sorted by Sharpe,
with the headline metric columns: ``evaluation/tracking_policies.py``), prints the page's visible
text and writes a screenshot. The tracking server must be running (``mlflow server`` or ``mlflow
ui``); the experiment and run are read through ``$MLFLOW_TRACKING_URI`` (by default the local
SQLite store). Chromium is Debian's ``chromium`` package (``apt-get install chromium``), started with
``--headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run
--disable-sync`` and a throw-away profile folder, in a session of its own that is ended by its
process-group id if it overruns. ``tests/test_mlflow_ui.py`` runs this against a server it starts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-sync",
)
#: browser time the page gets to fetch its runs and render (virtual time: timers run ahead)
VIRTUAL_TIME_MS = 60_000
WINDOW = (1600, 1000)


def find_chromium() -> str | None:
    """Path of a Chromium / Chrome binary on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def run_chromium(
    binary: str,
    url: str,
    profile: Path,
    *,
    screenshot: Path | None = None,
    window: tuple[int, int] = WINDOW,
    timeout_s: float = 180.0,
) -> str:
    """Load ``url`` headless; returns the DOM after scripts ran (or writes ``screenshot``)."""
    action = [f"--screenshot={screenshot}"] if screenshot is not None else ["--dump-dom"]
    cmd = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        *action,
        url,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the renderer processes go too
        proc.communicate()
        raise RuntimeError(f"chromium did not finish loading {url} in {timeout_s:.0f} s") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers a finished browser may leave behind
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode} on {url}")
    return out.decode("utf-8", errors="replace")


def visible_text(dom: str) -> str:
    """The page's text: scripts, styles and tags removed, whitespace collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", text)
    return " ".join(text.split())


def runs_table_text(dom: str) -> str:
    """The runs table's part of the page text (from its header to the run count)."""
    text = visible_text(dom)
    match = re.search(r"Run Name.*?matching runs?", text)
    return match.group(0) if match else text


def capture_view(ui_base: str, experiment_id: str, key: str, out: Path) -> str:
    """DOM text of the saved comparison view ``key`` and its screenshot at ``out``."""
    from defialloc.evaluation.tracking_policies import comparison_view_url

    binary = find_chromium()
    if binary is None:
        raise RuntimeError(
            f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)}); apt-get install chromium"
        )
    url = comparison_view_url(ui_base, experiment_id, key)
    with tempfile.TemporaryDirectory(prefix="defialloc-chromium-") as tmp:
        dom = run_chromium(binary, url, Path(tmp) / "dom-profile")
        run_chromium(binary, url, Path(tmp) / "shot-profile", screenshot=out.resolve())
    return dom


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    import mlflow

    from defialloc.agents.mlflow_store import default_experiment, tracking_uri
    from defialloc.evaluation.tracking import EVALUATION_KIND, EVALUATION_TAG
    from defialloc.evaluation.tracking_policies import save_comparison_view

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ui", required=True, help="MLflow UI base URL, e.g. http://127.0.0.1:5000"
    )
    parser.add_argument("--experiment", default=None, help="default: the default experiment")
    parser.add_argument("--run-id", default=None, help="evaluation run (default: the latest)")
    parser.add_argument("--out", type=Path, default=Path("mlflow_runs_table.png"))
    args = parser.parse_args(argv)
    client = mlflow.MlflowClient(tracking_uri())
    name = args.experiment or default_experiment()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        print(f"experiment {name!r} not found", file=sys.stderr)
        return 2
    run_id = args.run_id
    if run_id is None:
        runs = client.search_runs(
            [experiment.experiment_id],
            f"tags.`{EVALUATION_TAG}` = '{EVALUATION_KIND}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            print(f"experiment {name!r} has no evaluation runs", file=sys.stderr)
            return 2
        run_id = runs[0].info.run_id
    key = save_comparison_view(experiment.experiment_id, run_id)
    dom = capture_view(args.ui, experiment.experiment_id, key, args.out)
    print(runs_table_text(dom))
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
