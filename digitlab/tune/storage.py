"""Where a study lives: storage URLs (SQLite by default), SQLAlchemy storages made for several workers,
opening a study, and the atomic claim of the best trial's retraining."""

from __future__ import annotations

import time
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
