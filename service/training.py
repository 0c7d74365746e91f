"""Training and fine-tuning as UWS jobs (``/ml/train``, the operator's only).

A train job runs every stage `latentvo train|encode|analyse|index` runs, in a process of its own
(``python -m service.training``, never a fork of the web server: torch would deadlock it), and
ends as a new ``ml.model`` version with its MI table, informative dimensions, anomaly scores,
index and provenance (training-set hash, parameters, seed, the job), ready to serve but not in
service unless ``PROMOTE=true``. The job's work waits on that process: it passes on its progress
(stage, epoch, losses) to the job document's jobInfo, and on ABORT or when the execution
duration is up it ends the process (SIGTERM, then SIGKILL 5 s later) and removes the version it
had begun, so the job stops within seconds and leaves nothing half-made.

Parameters: ``EPOCHS``, ``LATENT_DIM``, ``BETA`` (the KL weight), ``SEED``, ``SUBSET`` (ADQL whose
``obs_publisher_did`` column chooses the training spectra, run as /tap/sync runs it, at most
``[service] hard_maxrec`` of them), ``FROM_VERSION`` (fine-tune that version: same latent
dimension), ``PROMOTE`` (``true``: put the new version in service when it is indexed).
The result is a VOTable: the version's label-information table, provenance in INFOs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from model.checkpoint import WEIGHTS_FILE
from service.errors import NotFoundError, UsageError, WorkInterrupted
from service.state import state
from service.uws.jobs import JobRun

#: Seconds between two looks at the training process, and the most SIGTERM is given before SIGKILL.
POLL_S, TERM_S = 0.2, 5.0
#: Job parameters → [model] settings (TrainConfig names), with the type and least value of each.
SETTINGS: dict[str, tuple[str, Callable, float]] = {
    "EPOCHS": ("epochs", int, 1),
    "LATENT_DIM": ("latent_dim", int, 2),
    "BETA": ("kl_weight", float, 0.0),
    "SEED": ("seed", int, 0),
}
#: The largest value each may take.
MOST = {"EPOCHS": 10_000, "LATENT_DIM": 256, "BETA": 1000.0, "SEED": 2**31 - 1}


def run_training(run: JobRun) -> tuple[bytes, str]:
    """A train job's work (see the module docstring)."""
    params = run.job.params()
    config = state().config
    overrides = _overrides(params)
    from_version = params.get_int("FROM_VERSION", minimum=1)
    if from_version is not None:
        _trained(from_version)
    promote = _boolean(params.get("PROMOTE"), "PROMOTE")
    subset = params.get("SUBSET")
    dids = _subset(subset, run) if subset else None
    provenance = {
        "job_id": run.job.job_id,
        "parameters": {name: values[-1] for name, values in run.job.parameters.items() if values},
        "from_version": from_version,
        "n_subset": None if dids is None else len(dids),
    }
    spec = {
        "config": _without_secrets(config),
        "dids": dids,
        "overrides": overrides,
        "from_version": from_version,
        "promote": promote,
        "provenance": provenance,
    }
    deadline = None if run.duration is None else time.monotonic() + run.duration
    process = subprocess.Popen(
        [sys.executable, "-m", "service.training"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # a signal to the server's process group does not reach it
    )
    reports: list[dict] = []
    reader = threading.Thread(target=_read_reports, args=(process, reports, run.report), daemon=True)
    reader.start()
    try:
        process.stdin.write(json.dumps(spec))  # the settings travel by pipe: no secret on disk
        process.stdin.close()
    except BrokenPipeError:
        pass  # it died at once; its exit status says so below
    while process.poll() is None:
        if run.cancelled() or (deadline is not None and time.monotonic() > deadline):
            _stop(process)
            reader.join(timeout=TERM_S)
            _discard(reports)
            raise WorkInterrupted("the training was stopped")
        time.sleep(POLL_S)
    reader.join(timeout=TERM_S)
    last = reports[-1] if reports else {}
    if process.returncode != 0 or last.get("stage") != "done":
        _discard(reports)
        message = last.get("error") or f"the training process ended with status {process.returncode}"
        raise UsageError(f"training failed: {message}")
    return _result(int(last["model_version"]), promote, provenance)


# -- the parameters ------------------------------------------------------------------------------


def _overrides(params) -> dict:
    found = {}
    for name, (setting, kind, least) in SETTINGS.items():
        raw = params.get(name)
        if raw is None or not raw.strip():
            continue
        try:
            value = kind(raw.strip())
        except ValueError:
            raise UsageError(f"{name} must be a number, not {raw!r}") from None
        if not least <= value <= MOST[name]:
            raise UsageError(f"{name} must lie between {least} and {MOST[name]}, not {raw!r}")
        found[setting] = value
    return found


def _boolean(raw: str | None, name: str) -> bool:
    value = (raw or "false").strip().lower()
    if value not in ("true", "false"):
        raise UsageError(f"{name} must be true or false, not {raw!r}")
    return value == "true"


def _trained(version: int) -> None:
    archive = state().archive()
    try:
        row = archive.model(version)
    except LookupError:
        raise NotFoundError(f"FROM_VERSION {version}: the archive has no such model version") from None
    if not (archive.model_dir(version) / WEIGHTS_FILE).is_file():
        raise UsageError(f"FROM_VERSION {version} has no trained weights (it is {row['stage']})")


def _subset(query: str, run: JobRun) -> list[str]:
    """The DIDs the SUBSET query selects, run as /tap/sync runs a query (its checks, limits, time)."""
    from service.params import Params
    from service.tap.sync import run_tap  # the TAP blueprint's modules load the job machinery

    maxrec = str(state().config["service"]["hard_maxrec"])
    values = {"LANG": ["ADQL"], "QUERY": [query], "RESPONSEFORMAT": ["csv"], "MAXREC": [maxrec]}
    uploads = run.job.params().getlist("UPLOAD")  # the job's own uploads, for SUBSET to join
    if uploads:
        values["UPLOAD"] = uploads
    asked = Params(values)
    response = run_tap(asked, run.parts, run.duration, run.cancelled)
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    header = [name.strip().lower() for name in rows[0]] if rows else []
    if "obs_publisher_did" not in header:
        raise UsageError("SUBSET must select the obs_publisher_did column of the training spectra")
    column = header.index("obs_publisher_did")
    dids = sorted({row[column] for row in rows[1:] if len(row) > column and row[column]})
    if len(dids) < 2:
        raise UsageError(f"SUBSET selects {len(dids)} spectra; training needs at least two")
    return dids


def _without_secrets(config: dict) -> dict:
    copy = {section: dict(values) for section, values in config.items()}
    copy["ml"]["operator_token"] = ""
    return copy


# -- the process ---------------------------------------------------------------------------------


def _read_reports(process: subprocess.Popen, reports: list[dict], report: Callable[[dict], None]) -> None:
    """The training process's JSON lines: each a progress report (or its end, or its error)."""
    for line in process.stdout:
        try:
            info = json.loads(line)
        except json.JSONDecodeError:
            continue
        reports.append(info)
        if "error" not in info:
            report(info)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the training process's group, SIGKILL if it is still there TERM_S later."""
    for sig, wait in ((signal.SIGTERM, TERM_S), (signal.SIGKILL, TERM_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _discard(reports: list[dict]) -> None:
    """Remove the version a stopped or failed run had begun (it is never the one in service)."""
    versions = [r["model_version"] for r in reports if "model_version" in r]
    if not versions:
        return
    from service.archive import Archive

    archive = Archive.from_config(state().config)  # request connections are read-only
    try:
        row = archive.db.one("SELECT is_current FROM ml_model WHERE model_version = ?", (versions[-1],))
        if row is not None and not row["is_current"]:
            archive.remove_model(int(versions[-1]))
    finally:
        archive.close()


# -- the result ----------------------------------------------------------------------------------


def _result(version: int, promoted: bool, provenance: dict) -> tuple[bytes, str]:
    from service.dali import FORMATS, write_result
    from service.tap.schema import current_tableset

    archive = state().archive()
    model = archive.model(version)
    table = current_tableset(archive).table("ml.label_correlation")
    names = [c.name for c in table.columns if c.name != "model_version"]
    rows = archive.db.all(
        f"SELECT {', '.join(names)} FROM ml_label_correlation WHERE model_version = ? ORDER BY label, dim",
        (version,),
    )
    columns = [table.column(name).to_column() for name in names]
    infos = [
        ("model_version", str(version)),
        ("stage", model["stage"]),
        ("in_service", "true" if promoted else "false"),
        ("training_set_hash", model["training_set_hash"] or ""),
        ("n_train", str(model["n_train"])),
        ("latent_dim", str(model["latent_dim"])),
        ("informative_dims", model["informative_dims"] or ""),
        ("provenance", json.dumps(provenance, sort_keys=True)),
    ]
    response = write_result(columns, [list(row) for row in rows], FORMATS["votable"], infos=infos)
    return response.get_data(), response.content_type


# -- the training process --------------------------------------------------------------------------


def main() -> int:
    """``python -m service.training``: the settings as JSON on stdin, progress as JSON lines on stdout."""
    from service import pipeline
    from service.archive import Archive

    spec = json.load(sys.stdin)
    config = spec["config"]

    def emit(info: dict) -> None:
        print(json.dumps(info), flush=True)

    archive = Archive.from_config(config)
    epochs = int(spec["overrides"].get("epochs", config["model"]["epochs"]))
    version = None
    try:
        emit({"stage": "train", "epoch": 0, "epochs": epochs})

        def on_epoch(record: dict) -> None:
            emit(
                {
                    "stage": "train",
                    "epoch": record["epoch"],
                    "epochs": epochs,
                    "loss": round(float(record["train_loss"]), 4),
                    "val_loss": round(float(record["val_loss"]), 4),
                }
            )

        version = pipeline.train_model(
            archive,
            config,
            progress=False,
            dids=spec["dids"],
            overrides=spec["overrides"],
            from_version=spec["from_version"],
            on_epoch=on_epoch,
            provenance=spec["provenance"],
        )
        for stage, step in (
            ("encode", lambda: pipeline.encode(archive, version, progress=False)),
            ("analyse", lambda: pipeline.analyse(archive, config, version, progress=False)),
            ("index", lambda: pipeline.build_index(archive, config, version, False, spec["promote"])),
        ):
            emit({"stage": stage, "model_version": version})
            step()
        emit({"stage": "done", "model_version": version, "in_service": spec["promote"]})
        return 0
    except (ValueError, LookupError) as exc:  # what the settings or the archive make impossible
        if version is not None:
            archive.remove_model(version)
        emit({"error": str(exc)})
        return 2
    finally:
        archive.close()


if __name__ == "__main__":
    sys.exit(main())
