"""Progress on the screen, one reporter for training, the studies and tune.

Modes: ``rich`` (terminal), ``notebook`` (Jupyter: one HTML block, updated in place with a progress
bar and a table of epochs), ``json`` (one event object per line on stdout, for scripts), ``quiet``.
``auto`` picks ``notebook`` inside a Jupyter kernel and ``rich`` elsewhere; ``rich`` in a kernel also
becomes ``notebook``, because rich's live bars need ipywidgets there and otherwise show nothing.
"""

from __future__ import annotations

import html
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from digitlab.config import RECIPES, TrainConfig, recipe_config

# How progress is shown; "auto" picks "notebook" inside Jupyter and "rich" elsewhere.
ProgressMode = Literal["auto", "rich", "notebook", "json", "quiet"]


class Reporter:
    """Messages, result lines and (for training) a live bar within each epoch and a line per epoch."""

    NOTEBOOK_REFRESH = 0.5  # seconds between in-place updates: every step would flood the front end

    def __init__(self, mode: ProgressMode = "rich") -> None:
        if mode in ("auto", "rich"):
            mode = "notebook" if self.in_notebook() else "rich"
        self.mode = mode
        self.console = Console() if mode == "rich" else None
        self._progress: Progress | None = None  # rich mode: the running epoch's bar
        self._task: Any = None
        # notebook mode: what the HTML block shows, and the handle that updates it
        self._handle: Any = None
        self._lines: list[str] = []
        self._rows: list[dict[str, float]] = []
        self._bar: dict[str, Any] | None = None
        self._shown_at = 0.0

    @staticmethod
    def in_notebook() -> bool:
        """True inside a Jupyter kernel (IPython over ZMQ), not in a terminal IPython or plain Python."""
        if "IPython" not in sys.modules:  # never import IPython just to ask
            return False
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"

    # --- what every caller uses -------------------------------------------------------------------

    def event(self, kind: str, /, **data: Any) -> None:
        """A JSON event line (json mode only)."""
        if self.mode == "json":
            sys.stdout.write(json.dumps({"event": kind, **data}, default=str) + "\n")
            sys.stdout.flush()

    def message(self, text: str) -> None:
        """A line of text (rich markup allowed) for people; a ``message`` event for scripts."""
        self.event("message", text=text)
        self.show(text)

    def line(self, kind: str, text: str, /, **data: Any) -> None:
        """One result (a study's curve, a tune trial): ``text`` for people, a ``kind`` event with ``data``."""
        self.event(kind, **data)
        self.show(text)

    def show(self, text: str) -> None:
        """``text`` on the screen (rich, notebook), no event."""
        if self.mode == "rich":
            self.console.print(text, highlight=False)
        elif self.mode == "notebook":
            self._lines.extend(Text.from_markup(text).plain.splitlines())
            self._show(force=True)

    # --- training ---------------------------------------------------------------------------------

    def config(self, config: TrainConfig, run_dir: Path) -> None:
        """The run's config: a table of every field (changed ones bold), or one line in a notebook."""
        self.event("config", config=config.to_dict(), run_dir=str(run_dir))
        defaults = TrainConfig()
        if self.mode == "notebook":
            # One line: the recipe and what differs from it (the full table would fill the screen).
            recipe = recipe_config(config.recipe) if config.recipe in RECIPES else defaults
            changed = [f"{f.name}={getattr(config, f.name)}" for f in fields(config)
                       if getattr(config, f.name) != getattr(recipe, f.name) and f.name not in ("runs_dir", "recipe")]
            self._lines.append(f"digitlab train -> {run_dir}: recipe {config.recipe}"
                               + (f" with {', '.join(changed)}" if changed else ""))
            self._show(force=True)
        if self.mode != "rich":
            return
        table = Table(title=f"digitlab train -> {run_dir}", show_header=False, box=None, pad_edge=False)
        for f in fields(config):
            value = getattr(config, f.name)
            style = "bold" if value != getattr(defaults, f.name) else "dim"
            table.add_row(f"[{style}]{f.name}[/]", f"[{style}]{value}[/]")
        self.console.print(table)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        """Open the bar of epoch ``epoch`` (1-based) of ``epochs``, ``steps`` mini-batches long."""
        self.epoch_stop()
        if self.mode == "notebook":
            self._bar = {"epoch": epoch, "epochs": epochs, "steps": steps, "done": 0, "loss": float("nan"),
                         "start": time.perf_counter()}
        elif self.mode == "rich":
            self._progress = Progress(
                TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=steps, loss=float("nan"))

    def advance(self, loss: float) -> None:
        """One mini-batch done, with its loss."""
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=loss)
        elif self._bar is not None:
            self._bar["done"] += 1
            self._bar["loss"] = loss
            self._show(force=self._bar["done"] == self._bar["steps"])

    def epoch_stop(self) -> None:
        """Close the epoch's bar (transient: the epoch's line replaces it). Safe to call twice."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._bar = None

    @contextmanager
    def epoch_bar(self, epoch: int, epochs: int, steps: int) -> Iterator[Callable[[float], None]]:
        """``epoch_start`` .. ``epoch_stop`` around a block that calls the yielded ``advance(loss)``."""
        self.epoch_start(epoch, epochs, steps)
        try:
            yield self.advance
        finally:
            self.epoch_stop()

    def epoch_end(self, row: dict[str, float], epochs: int) -> None:
        """The finished epoch's line (or table row): losses, accuracies, learning rate, seconds."""
        self.epoch_stop()
        self.event("epoch", **row)
        if self.mode == "notebook":
            self._rows.append(dict(row))
            self._show(force=True)
            return
        if self.mode != "rich":
            return
        val = ""
        if not math.isnan(row.get("val_loss", float("nan"))):
            val = f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        self.console.print(
            f"epoch {int(row['epoch'])}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
            f"{val}  lr {row['lr']:.3g}  {row['seconds']:.1f}s",
            highlight=False,
        )

    # --- notebook mode: one display block, replaced in place ----------------------------------------

    _COLUMNS = (("epoch", "epoch", "{:.0f}"), ("train_loss", "train loss", "{:.4f}"),
                ("train_acc", "train acc", "{:.2%}"), ("val_loss", "val loss", "{:.4f}"),
                ("val_acc", "val acc", "{:.2%}"), ("lr", "lr", "{:.3g}"), ("seconds", "time", "{:.1f}s"))

    def _bar_text(self) -> tuple[str, float] | None:
        """The current epoch's bar as text and its done fraction (None between epochs)."""
        b = self._bar
        if b is None:
            return None
        elapsed = time.perf_counter() - b["start"]
        left = elapsed / b["done"] * (b["steps"] - b["done"]) if b["done"] else float("nan")
        eta = f"{int(left // 60)}:{int(left % 60):02d} left" if math.isfinite(left) else ""
        loss = f"loss {b['loss']:.4f}" if math.isfinite(b["loss"]) else ""
        text = f"epoch {b['epoch']}/{b['epochs']}  {b['done']}/{b['steps']}  {loss}  {eta}".rstrip()
        return text, b["done"] / max(1, b["steps"])

    def _render(self) -> dict[str, str]:
        plain = list(self._lines)
        parts = [f"<div>{html.escape(line)}</div>" for line in self._lines]
        if self._rows:
            cols = [c for c in self._COLUMNS if any(math.isfinite(r.get(c[0], float("nan"))) for r in self._rows)]

            def cell(row: dict[str, float], key: str, fmt: str) -> str:
                v = row.get(key, float("nan"))
                return fmt.format(v) if math.isfinite(v) else ""

            head = "".join(f"<th>{name}</th>" for _, name, _ in cols)
            body = "".join(
                "<tr>" + "".join(f"<td>{cell(r, k, f)}</td>" for k, _, f in cols) + "</tr>" for r in self._rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            plain.append("".join(f"{name:>11}" for _, name, _ in cols))
            plain += ["".join(f"{cell(r, k, f):>11}" for k, _, f in cols) for r in self._rows]
        bar = self._bar_text()  # below the finished epochs, as in a terminal
        if bar is not None:
            text, frac = bar
            width = 30
            plain.append(f"[{'#' * round(frac * width):<{width}}] {text}")
            parts.append(
                f'<div><progress value="{frac:.4f}" max="1" style="width:18em;vertical-align:middle"></progress>'
                f" {html.escape(text)}</div>"
            )
        style = "font-family:var(--jp-code-font-family,monospace);font-size:90%"
        return {"text/html": f'<div style="{style}">{"".join(parts)}</div>', "text/plain": "\n".join(plain)}

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if (not force and now - self._shown_at < self.NOTEBOOK_REFRESH) or not self.in_notebook():
            return  # outside a kernel IPython's display would print the raw dict
        self._shown_at = now
        from IPython.display import display

        data = self._render()
        if self._handle is None:
            self._handle = display(data, raw=True, display_id=True)
        else:
            self._handle.update(data, raw=True)


def format_value(v: Any) -> str:
    """A parameter value for a one-line summary: floats to 3 significant digits."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
