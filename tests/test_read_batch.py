"""`digitlab read` over many files and folders, and `/v1/read`'s format options."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.data import load_dataset


@pytest.fixture(scope="module")
def field_folder(tmp_path_factory):
    """Two date fields and two amount fields, a damaged PNG and a text file, in nested folders."""
    from digitlab.fields import random_check_field

    ds = load_dataset("mnist")
    root = tmp_path_factory.mktemp("fields")
    (root / "more").mkdir()
    rng = np.random.default_rng(40)
    truth = {}
    for k in range(4):
        f = random_check_field(ds.test_images, ds.test_labels, rng, kind=("date", "amount")[k % 2], overlap=0.0,
                               broken=0.0)
        path = (root if k < 2 else root / "more") / f"field{k}.png"
        Image.fromarray(f.image).save(path)
        truth[str(path)] = f
    whole = open(next(iter(truth)), "rb").read()
    (root / "broken.png").write_bytes(whole[: len(whole) // 2])  # a PNG cut short
    (root / "notes.txt").write_text("not an image", encoding="utf-8")
    return root, truth


def test_read_a_folder_reports_the_broken_file_and_the_non_image_and_reads_the_rest(quick_run, field_folder):
    root, truth = field_folder
    out = CliRunner().invoke(app, ["read", str(quick_run), str(root), "--format", "date", "--json"])
    assert out.exit_code == 1, out.output  # some files could not be read
    records = json.loads(out.stdout)
    assert len(records) == 6
    by_file = {r["file"]: r for r in records}
    assert "damaged" in by_file[str(root / "broken.png")]["error"]
    assert "not a readable image" in by_file[str(root / "notes.txt")]["error"]
    for path in truth:
        record = by_file[path]
        assert record["error"] is None and record["text"] and record["format"] == "date"
        assert len(record["symbols"]) == len(record["text"]) and all(len(s["box"]) == 4 for s in record["symbols"])
    # JSON lines: the same records, one per line.
    out = CliRunner().invoke(app, ["read", str(quick_run), str(root), "--jsonl"])
    assert out.exit_code == 1
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["file"] for r in lines] == [r["file"] for r in records]
    # CSV: a header and one row per file.
    out = CliRunner().invoke(app, ["read", str(quick_run), str(root), "--csv", "--format", "amount"])
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 6 and {r["format"] for r in rows} == {"amount"}
    assert sum(bool(r["error"]) for r in rows) == 2
    assert all(r["valid"] in ("True", "False") for r in rows if not r["error"])


def test_read_files_given_one_by_one_and_the_single_file_output(quick_run, field_folder):
    root, truth = field_folder
    files = sorted(truth)
    out = CliRunner().invoke(app, ["read", str(quick_run), *files[:2], "--json"])
    assert out.exit_code == 0, out.output  # every file was read
    assert [r["file"] for r in json.loads(out.stdout)] == files[:2]
    # One file: one object, as before batches existed.
    out = CliRunner().invoke(app, ["read", str(quick_run), files[0], "--json", "--format", "date"])
    assert out.exit_code == 0
    record = json.loads(out.stdout)
    assert record["file"] == files[0] and record["format"] == "date" and "review" in record
    out = CliRunner().invoke(app, ["read", str(quick_run), files[0], "--threshold", "1.0"])
    assert out.exit_code == 0 and "review" in out.stdout
    # One broken file alone: one sentence, exit 2.
    out = CliRunner().invoke(app, ["read", str(quick_run), str(root / "broken.png")])
    assert out.exit_code == 2 and "damaged" in out.output and "Traceback" not in out.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["read"], "Give the field images"),
        (["read", "no-such-run", "x.png"], "No run found"),
        (["read", "RUN", "--format", "time"], "digits, date or amount"),
        (["read", "RUN", "--json", "--csv"], "choose one"),
        (["read", "RUN", "--threshold", "2"], "not a probability"),
        (["read", "RUN"], "Give the field images"),
    ],
)
def test_read_usage_errors_are_one_sentence(quick_run, field_folder, args, message):
    root, truth = field_folder
    args = [str(quick_run) if a == "RUN" else a for a in args]
    if "--format" in args or "--threshold" in args:
        args.append(sorted(truth)[0])
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output


def test_read_synthetic_checks(quick_run, tmp_path):
    out = CliRunner().invoke(app, ["read", str(quick_run), "--synthetic", "4", "--seed", "3", "--format", "checks",
                                   "--json", "--show", str(tmp_path)])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["kind"] == "checks" and result["fields"] == 4 and 0 <= result["valid_rate"] <= 1
    assert [p["max_error"] for p in result["operating_points"]] == [0.01, 0.001]
    assert len(list(tmp_path.glob("field_*.png"))) == 4


def test_operating_points():
    from digitlab.fields.bench import operating_points

    conf = [0.99, 0.98, 0.97, 0.9, 0.8, 0.5]
    right = [True, True, True, False, True, False]
    one, tenth = operating_points(conf, right, targets=(0.25, 0.0))
    assert one["accept_rate"] == pytest.approx(5 / 6) and one["threshold"] == 0.8 and one["errors_accepted"] == 1
    assert tenth["accept_rate"] == pytest.approx(3 / 6) and tenth["threshold"] == 0.97


def test_serve_read_takes_the_format_options(quick_run, field_folder):
    from fastapi.testclient import TestClient

    from digitlab.serve import create_app

    root, truth = field_folder
    path = next(p for p, f in sorted(truth.items()) if f.options["format"] == "date")
    payload = open(path, "rb").read()
    with TestClient(create_app(quick_run)) as client:
        body = client.post("/v1/read?format=date&day_first=false&threshold=0.5",
                           files={"file": ("f.png", payload, "image/png")}).json()
        assert body["format"] == "date" and body["review_threshold"] == 0.5
        assert [s["char"] for s in body["symbols"]] == list(body["text"])
        assert body["size"] == list(Image.open(path).size)
        for query, word in (("format=time", "format"), ("day_first=maybe", "day_first"), ("threshold=7", "threshold"),
                            ("threshold=x", "threshold")):
            r = client.post(f"/v1/read?{query}", files={"file": ("f.png", payload, "image/png")})
            assert r.status_code == 422 and word in r.json()["detail"]


def test_read_field_lives_in_fields_and_predict_does_not_import_it():
    import subprocess
    import sys

    import digitlab.fields
    import digitlab.predict

    assert digitlab.fields.read_field is digitlab.fields.reading.read_field
    assert not hasattr(digitlab.predict, "read_field")  # moved, so that predict and fields make no circle
    code = "import sys, digitlab.predict; print('digitlab.fields' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
