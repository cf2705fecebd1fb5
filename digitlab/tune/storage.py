"""Where a study lives: storage URLs (SQLite by default), SQLAlchemy storages made for several workers,
opening a study, the workers' roll call and the atomic claim of the best trial's retraining."""

from __future__ import annotations

import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from digitlab.errors import ConfigError

# Shared studies (docs/distributed.md): a running trial beats every HEARTBEAT seconds; one silent for
# twice that (its worker died) is marked failed by the next worker and run again, at most RETRIES times.
HEARTBEAT_SECONDS = 60
RETRIES = 2
SQLITE_TIMEOUT_SECONDS = 60  # how long a worker waits for another's write lock on a shared SQLite file


def storage_url(storage: str | None, tune_dir: Path) -> str:
    """``storage`` if given, else the SQLite file ``tune_dir/study.db``."""
    if storage:
        return storage
    tune_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(tune_dir / 'study.db').resolve()}"


def hide_password(url: str) -> str:
    """The URL as it may be printed: any password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL (e.g. a journal file): nothing to hide
        return url


def rdb_storage(url: str) -> Any:
    """An SQLAlchemy storage made for several workers: heartbeats, retried trials of dead workers, and
    SQLite writers that wait for each other's locks instead of failing after SQLAlchemy's 5 s."""
    import optuna

    if not url.startswith(("sqlite", "postgresql", "mysql", "oracle", "mssql")):
        return url  # let optuna judge (and explain) anything else
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats and retries are marked experimental
        if retry is not None:
            callback = {"heartbeat_stale_trial_callback": retry(max_retry=RETRIES)}
        else:  # optuna < 4.4
            callback = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=RETRIES)}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=2 * HEARTBEAT_SECONDS, **callback)


def open_study(url: str, name: str, sampler: Any, pruner: Any, attempts: int = 6) -> Any:
    """The study ``name`` in ``url``, created if new (maximizing); one clear ConfigError if it cannot be opened."""
    import optuna

    def create() -> Any:
        return optuna.create_study(storage=rdb_storage(url), study_name=name, sampler=sampler, pruner=pruner,
                                   direction="maximize", load_if_exists=True)

    try:
        for attempt in range(attempts - 1):
            try:
                return create()
            except Exception as exc:  # noqa: BLE001 - sorted out below
                # Workers starting together on a new database race to create its tables; the loser
                # gets a database error and finds the tables there when it tries again.
                if not type(exc).__module__.startswith("sqlalchemy"):
                    raise
                time.sleep(0.5 * (attempt + 1))
        return create()
    except ValueError as exc:  # e.g. an existing study that minimizes
        raise ConfigError(f"Study '{name}' in {hide_password(url)} cannot be used ({exc}): pick another --study.") \
            from exc
    except Exception as exc:  # noqa: BLE001 - bad URLs, missing drivers, unreachable servers
        raise ConfigError(
            f"Cannot open the study storage '{hide_password(url)}' ({exc.__class__.__name__}: {exc}): check "
            "--storage (e.g. sqlite:///runs/study.db or postgresql://user@host/db) and that its driver is installed."
        ) from exc


def claim_final(url: str, study: Any, best: Any) -> bool:
    """Whether this process may retrain ``best``: the first to create a marker study wins.

    Study names are unique in the storage, so creating ``STUDY:final-N`` is an atomic claim even
    between workers on several machines that finish at the same moment.
    """
    import optuna

    try:
        optuna.create_study(storage=rdb_storage(url), study_name=f"{study.study_name}:final-{best.number}")
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


# A searching worker is listed as a marker study ``STUDY:worker-ID`` while its trials run, so a worker
# that has finished can tell whether others will still add trials (between two trials a worker has
# none running, and the best may still change).
WORKER_MARK = ":worker-"


def enlist_worker(url: str, study: Any) -> str | None:
    """List this process as searching ``study``; the marker's name (None for a storage without studies
    by name, where only running trials are seen)."""
    import optuna

    storage = rdb_storage(url)
    if isinstance(storage, str):
        return None
    name = f"{study.study_name}{WORKER_MARK}{uuid.uuid4().hex[:12]}"
    optuna.create_study(storage=storage, study_name=name)
    return name


def retire_worker(url: str, name: str | None) -> None:
    """Take this process's marker off the roll call (it has run its trials)."""
    import optuna

    if name is not None:
        try:
            optuna.delete_study(study_name=name, storage=rdb_storage(url))
        except KeyError:  # already gone
            pass


def other_workers(url: str, study: Any) -> int:
    """How many other workers are still searching ``study`` (their markers are listed)."""
    import optuna

    storage = rdb_storage(url)
    if isinstance(storage, str):
        return 0
    prefix = f"{study.study_name}{WORKER_MARK}"
    return sum(n.startswith(prefix) for n in optuna.get_all_study_names(storage=storage))
