"""The report a team reads: its library on the tiny run's real results, then `snakemake --report`
(.html and .zip) opened offline in headless Chromium, every section clicked through.

The browser test fails when a section or a result is missing, an image did not load, has the
wrong size or is blank, or a table lacks its key text. Screenshots of every view are kept in
tests/artifacts/report/{html,zip}/ (gitignored). Chromium and its driver are Debian's
`chromium` and `chromium-driver`; the test installs them with apt-get when missing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from detfold.core.io import read_json
from detfold.evaluate.metrics import STAT_NAMES, mean_std
from detfold.report import facts, plots, tables
from helpers.workflow_run import snakemake
from PIL import Image

pytestmark = pytest.mark.workflow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parents[1] / "artifacts" / "report"
SCREENS = ["screen__lr-0.002", "screen__lr-0.004"]  # the tiny run's screen: two variants on fold 0
SCREENS_FOLD0 = [f"{s}/fold0" for s in SCREENS]
CATEGORIES = [
    "0. Summary",
    "1. Fold balance",
    "2. Audit",
    "3. Training",
    "4. CV results",
    "5. Ensemble",
    "6. Error analysis",
    "7. Run facts",
]
ANALYSES = ["frcnn", "oof_ensemble", "tiny"]  # each model, and the models fused
PLOTS = [
    "results/folds/balance.png",
    "results/report/folds/sizes.png",
    "results/report/audit/counts.png",
    "results/report/training/frcnn.png",
    "results/report/training/tiny.png",
    *(f"results/report/training/{s}.png" for s in SCREENS),
    "results/report/cv/per_class_ap.png",
    "results/report/compare/leaderboard.png",
    "results/report/cv/pr_curves.png",
    "results/report/ensemble/comparison.png",
    "results/report/analysis/breakdown.png",
    "results/report/analysis/confusion.png",
]
TABLES = {  # each HTML page of the report and text it must show
    "results/report/summary.html": ["Delivered predictions", "Candidates", "Leaderboard", "Screens", *SCREENS],
    "results/report/compare/leaderboard.html": ["fold 0", "pooled OOF (3 folds)", "paired 95 %", "screen", *SCREENS],
    "results/report/audit/counts.html": ["duplicate", "size_outlier", "boxes_after", "train", "test"],
    "results/report/cv/folds.html": ["mAP50", "AR_100", "mean +- std", "pooled OOF", "RBC", "WBC", "Platelets"],
    "results/report/ensemble/comparison.html": [
        "delivered",
        "model ensemble",
        "fold ensemble",
        "nested (honest)",
        "test mAP50",
    ],
    "results/report/ensemble/search.html": ["wbf", "iou_thr", "mAP50"],
    "results/report/analysis/thresholds.html": [
        "score_thr",
        "OOF F1 (in-sample)",
        "blend F1",
        "RBC",
        "Platelets",
        "TIDE breakdown",
        "Miss",
        "FalsePos",
        *ANALYSES,
    ],
    "results/report/run_facts.html": ["seed", "torch", "mmdet", "mmcv", "snakemake", "train", "rtmdet_tiny_cpu.py"],
}


# ---------------------------------------------------------------------------------------------
# the library on the tiny run's real results (no Snakemake)


def test_scalars_of_real_trainings(tiny_run):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    for model, validates in (("tiny", True), ("frcnn", False)):
        epochs = set(range(1, config["models"][model]["epochs"] + 1))
        for fold in range(3):
            train, val, validated = plots.read_scalars(tiny_run / "results" / "train" / model / f"fold{fold}" / "work")
            assert len(train) >= 1 and train["iter"].is_monotonic_increasing
            assert (train["lr"] > 0).all() and np.isfinite(train["loss"]).all() and set(train["epoch"]) == epochs
            assert validated == validates  # tiny sets val_interval: 1, frcnn validates never
            assert val.empty or set(val["epoch"]) <= epochs


def test_scalars_torn_last_line_is_skipped_other_bad_lines_raise(tiny_run, tmp_path):
    source = next((tiny_run / "results" / "train" / "tiny" / "fold0" / "work").glob("*/vis_data/scalars.json"))
    target = tmp_path / "work" / "20260101_000000" / "vis_data" / "scalars.json"
    target.parent.mkdir(parents=True)
    lines = source.read_text().splitlines()
    target.write_text("\n".join([*lines, '{"loss": 1.0, "it']))
    train, _, _ = plots.read_scalars(tmp_path / "work")
    assert len(train) == sum('"loss"' in line for line in lines)
    target.write_text("\n".join(["not json", *lines]))
    with pytest.raises(ValueError, match=r"scalars.json: line 1 is not JSON"):
        plots.read_scalars(tmp_path / "work")


def test_legends_never_cover_data_or_labels(tiny_run, tmp_path, monkeypatch):
    """Every plot with a legend, drawn from the tiny run's results: each legend lies outside
    every panel (bars, points, curves and their value labels are inside the panels)."""
    from detfold.report import stage

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(_legend_overlaps(fig)), save(fig, path)))
    r = tiny_run / "results"
    stage.report_ensemble(
        str(r / "ensemble/selection.json"), str(r / "ensemble/metrics.json"), str(r / "ensemble/search.csv"),
        str(tmp_path / "c.png"), str(tmp_path / "c.html"), str(tmp_path / "s.html"),
    )  # fmt: skip
    stage.report_compare(str(r / "compare/leaderboard.json"), str(tmp_path / "l.png"), str(tmp_path / "l.html"))
    stage.report_training("tiny", [str(r / f"train/tiny/fold{k}/model.pth") for k in range(3)], str(tmp_path / "t.png"))
    names = ["frcnn", "tiny"]
    stage.report_cv(
        {n: str(r / f"eval/{n}/metrics.json") for n in names}, {n: str(r / f"eval/{n}/pr_curves.csv") for n in names},
        str(tmp_path / "cv.html"), str(tmp_path / "ap.png"), str(tmp_path / "pr.png"),
    )  # fmt: skip
    stage.report_audit(str(r / "audit/summary.json"), str(tmp_path / "a.png"), str(tmp_path / "a.html"))
    assert len(figures) == 6
    assert [overlaps for overlaps in figures if overlaps] == []


def _legend_overlaps(fig) -> list[str]:
    """(legend, panel) pairs of ``fig`` whose drawn extents overlap, after its layout."""
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    found = []
    for i, ax in enumerate(fig.axes):
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        found += [f"legend of panel {i} over panel {j}" for j, other in enumerate(fig.axes) if box.overlaps(other.bbox)]
    return found


def test_cv_table_has_the_metrics_json_numbers(tiny_run):
    metrics = read_json(tiny_run / "results" / "eval" / "tiny" / "metrics.json")
    table, key = tables.cv_table(metrics)
    assert list(table.columns[3:]) == ["mAP", "mAP50", *STAT_NAMES[2:]]
    for k in range(3):
        assert table.iloc[k]["mAP50"] == metrics["folds"][k]["mAP50"]
        assert table.iloc[k]["AR_100"] == metrics["folds"][k]["stats"]["AR_100"]
    spread = mean_std([f["mAP50"] for f in metrics["folds"]])
    assert table.iloc[3]["mAP50"] == f"{tables.fmt(spread['mean'])} +- {tables.fmt(spread['std'])}"
    assert table.iloc[4]["mAP"] == metrics["pooled_oof"]["mAP"] and key == [False] * 4 + [True]


def test_ensemble_rows_show_optimistic_honest_and_test_numbers(tiny_run):
    selection = read_json(tiny_run / "results" / "ensemble" / "selection.json")
    test = read_json(tiny_run / "results" / "ensemble" / "metrics.json")
    rows = tables.ensemble_rows(selection, test).set_index("predictions")
    metric = selection["metric"]
    honest, optimistic = f"blend {metric}, nested (honest)", f"blend {metric}, in-sample (optimistic)"
    for kind in selection["kinds"]:
        c = selection["candidates"][kind]
        row = rows.loc[c["label"]]
        assert row[optimistic] == c["in_sample"][metric] and row[honest] == c["nested"][metric]
        assert row["test mAP50"] == test["candidates"][kind]["mAP50"]
    assert rows.loc["tiny/fold1", "test mAP"] == test["single"]["tiny/fold1"]["mAP"]
    assert rows.loc["tiny/fold1", optimistic] is None  # no choice made: nothing optimistic
    assert rows.loc["delivered", honest] == selection["delivered"]["honest"][metric]
    assert rows.loc["delivered", "test mAP50"] == test["delivered"]["mAP50"]
    assert len(rows) == 6 + len(selection["kinds"]) + 1


def test_summary_md_opens_with_the_delivered_predictions_and_their_intervals(tiny_run):
    r = tiny_run / "results"
    selection = read_json(r / "ensemble" / "selection.json")
    test = read_json(r / "ensemble" / "metrics.json")
    text = (r / "summary.md").read_text()
    head = text.split("## Candidates")[0]
    d = selection["delivered"]
    assert head.startswith("# detfold run summary\n\n## Delivered predictions")
    assert d["label"] in head and d["description"] in head
    lo, hi = d["honest"]["mAP50_ci95"]
    assert f"mAP50 {d['honest']['mAP50']:.4f} [{lo:.4f}, {hi:.4f}]" in head
    assert f"mAP50 {test['delivered']['mAP50']:.4f}" in head  # the test score, beside the honest one
    for model in ("tiny", "frcnn"):
        metrics = read_json(r / "eval" / model / "metrics.json")
        cv, pooled = metrics["cv"]["mAP50"], metrics["pooled_oof"]
        assert f"{cv['mean']:.4f} +- {cv['std']:.4f}" in text
        lo, hi = pooled["mAP50_ci95"]
        assert f"**{pooled['mAP50']:.4f}** [{lo:.4f}, {hi:.4f}]" in text


def test_benchmarks_give_one_row_per_job(tiny_run):
    root = tiny_run / "benchmarks"
    bench = facts.read_benchmarks([str(p) for p in sorted(root.rglob("*.tsv"))], str(root))
    counts = bench.rule.value_counts()
    assert counts["train"] == 6 + 2 and counts["predict"] == 18 + 2 and counts["audit"] == 1
    assert (bench.s >= 0).all() and set(bench[bench.rule == "train"].job) == {
        *(f"{m}/fold{k}" for m in ("tiny", "frcnn") for k in range(3)),
        *SCREENS_FOLD0,
    }


def test_report_files_are_offline_and_sized(tiny_run):
    r = tiny_run
    for path in PLOTS:
        with Image.open(r / path) as image:
            assert image.format == "PNG" and min(image.size) >= 100, path
            assert np.asarray(image.convert("L")).std() > 2, f"{path} is blank"
    with Image.open(r / "results/report/training/tiny.png") as image:
        assert image.size == (1500, 400)  # figsize (15, 4) at DPI 100: the size the browser test expects
    for path in TABLES:
        text = (r / path).read_text()
        assert "<script" not in text and not re.search(r"(src|href)=", text), f"{path} refers to something"


# ---------------------------------------------------------------------------------------------
# snakemake --report, opened in headless Chromium


def install_chromium() -> None:
    """Debian's chromium and chromium-driver via apt-get, when missing (a fresh CI machine)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        pytest.skip("chromium is missing and apt-get needs root: apt-get install chromium chromium-driver")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends"]):
        if cmd[1] == "install":
            cmd += ["chromium", "chromium-driver"]
        result = subprocess.run([*sudo, *cmd], capture_output=True, text=True, env=env, timeout=1200, check=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    print(f"installed chromium and chromium-driver in {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def reports(repo, tiny_run, tmp_path_factory) -> dict[str, Path]:
    """`snakemake --report` as one self-contained HTML file and as a zip (unpacked)."""
    out = tmp_path_factory.mktemp("report")
    for name in ("report.html", "report.zip"):
        result = snakemake(repo, tiny_run, "--report", str(out / name))
        assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(out / "report.zip") as archive:
        archive.extractall(out / "unzipped")
    (index,) = (out / "unzipped").glob("*/report.html")
    return {"html": out / "report.html", "zip": index}


@pytest.fixture(scope="module")
def browser():
    install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root
        "--disable-dev-shm-usage",
        "--window-size=1800,1300",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: no host name resolves
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def expected_results(run: Path) -> set[str]:
    gallery = {f"results/audit/gallery/{p.name}" for p in (run / "results" / "audit" / "gallery").glob("*.png")}
    assert gallery, "the tiny run's audit found nothing to show"
    analysis = {
        f"results/analysis/{name}/gallery/{p.name}"
        for name in ANALYSES
        for p in (run / "results" / "analysis" / name / "gallery").glob("*.png")
    }
    assert len(analysis) == 12 * len(ANALYSES), sorted(analysis)  # 5 review kinds, 6 error types, worst images
    return {*PLOTS, *TABLES, *gallery, *analysis}


def not_blank(png: bytes) -> float:
    """Standard deviation of the grey levels of a screenshot (0 for a blank one)."""
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float).std())


class ReportPage:
    """The Snakemake report (a single-page React app) in a browser, driven as a person would."""

    def __init__(self, driver, url: str, shots: Path) -> None:
        self.driver, self.url, self.shots = driver, url, shots

    def js(self, script: str):
        return self.driver.execute_script(script)

    def wait(self, condition, what: str | Callable[[], str], timeout: float = 30):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(condition)
        except TimeoutException:
            self.driver.save_screenshot(str(self.shots / "timeout.png"))
            what = what() if callable(what) else what
            pytest.fail(f"report: timed out waiting for {what} (screenshot {self.shots / 'timeout.png'})")

    def click(self, label: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        xpath = f"//a[span[normalize-space()={json.dumps(label)}]]".replace('"', "'")
        self.click_settled(self.wait(ec.element_to_be_clickable((By.XPATH, xpath)), f"menu item {label!r}"), label)

    def click_settled(self, element, what: str) -> None:
        """Click once the page has stopped moving. The navigation bar animates its width
        (Tailwind `transition-all`, 150 ms) when it switches from the menu to a category's results,
        which shifts the right-aligned buttons; a click sent mid-transition lands beside its target."""
        last: list = []

        def settled(driver) -> bool:
            running = driver.execute_script(
                "return document.getAnimations().filter(a => a.playState === 'running').length"
            )
            rect = element.rect
            still = running == 0 and rect == (last[-1] if last else None)
            last.append(rect)
            return still

        self.wait(settled, f"the page to stop moving before clicking {what}")
        element.click()

    def home(self) -> None:
        self.driver.get(self.url)
        self.wait(lambda d: d.execute_script("return typeof app !== 'undefined'"), "the report app")
        self.click("Workflow")

    def rows(self) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.XPATH, "//table[contains(@class, 'table-auto')]/tbody/tr")

    def show_row(self, index: int, shown: set[str]) -> str:
        from selenium.webdriver.common.by import By

        row = self.rows()[index]
        label = f"row {index} ({row.text!r})"
        self.click_settled(row.find_element(By.CSS_SELECTOR, "td:last-child a"), label)
        return self.wait(
            lambda d: (p := d.execute_script("return app.state.resultPath")) not in shown and p,
            lambda: f"the result of {label} to show (app.state.resultPath: {self.js('return app.state.resultPath')!r})",
        )


def check_image(page: ReportPage, path: str, run: Path) -> None:
    found = "Array.from(document.images).find(i => i.getAttribute('src') === results[app.state.resultPath].data_uri)"
    page.wait(lambda d: d.execute_script(f"const i = {found}; return !!i && i.complete"), f"image {path}")
    width, height = page.js(f"const i = {found}; return [i.naturalWidth, i.naturalHeight]")
    with Image.open(run / path) as image:
        assert (width, height) == image.size, f"{path}: shown {width}x{height}, file {image.size}"
    assert width >= 100 and height >= 100, f"{path}: {width}x{height}"
    element = page.js(f"const i = {found}; i.scrollIntoView(); return i")
    assert not_blank(element.screenshot_as_png) > 2, f"{path} renders blank"


def check_table(page: ReportPage, path: str) -> None:
    from selenium.webdriver.common.by import By

    frame = page.wait(lambda d: d.find_elements(By.TAG_NAME, "iframe"), f"the frame of {path}")[0]
    page.driver.switch_to.frame(frame)
    try:
        text = page.wait(lambda d: d.execute_script("return document.body && document.body.innerText"), path)
        tables = page.js("return document.querySelectorAll('table').length")
    finally:
        page.driver.switch_to.default_content()
    missing = [word for word in TABLES[path] if word not in text]
    assert tables >= 1 and missing == [], f"{path}: {tables} tables, missing {missing}"
    assert not_blank(frame.screenshot_as_png) > 2, f"{path} renders blank"


@pytest.mark.parametrize("kind", ["html", "zip"])
def test_report_shows_every_section_in_chromium(kind, reports, browser, tiny_run):
    started = time.monotonic()
    shots = ARTIFACTS / kind
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    page = ReportPage(browser, reports[kind].as_uri(), shots)
    page.home()
    categories = page.js("return categories")
    assert sorted(categories) == CATEGORIES
    expected = expected_results(tiny_run)
    assert set(page.js("return Object.keys(results)")) == expected
    assert all(page.js("return Object.values(results).map(r => r.caption.length > 40)"))
    page.driver.save_screenshot(str(shots / "00_workflow.png"))
    shown: set[str] = set()
    for category in CATEGORIES:
        for subcategory in sorted(categories[category]):
            page.home()
            page.click(category)
            if len(categories[category]) > 1:
                page.click(subcategory)
            count = len(categories[category][subcategory])
            page.wait(lambda d, n=count: len(page.rows()) == n, f"{count} rows in {category} / {subcategory}")
            for index in range(count):
                path = page.show_row(index, shown)
                if path.endswith(".png"):
                    check_image(page, path, tiny_run)
                else:
                    check_table(page, path)
                shown.add(path)
                name = re.sub(r"[^A-Za-z0-9]+", "_", path.removeprefix("results/").removesuffix(".png"))
                page.driver.save_screenshot(str(shots / f"{len(shown):02d}_{name}.png"))
    assert shown == expected
    requests = page.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in requests if r.startswith(("http:", "https:"))] == []
    print(f"{kind} report: {len(shown)} results checked in {time.monotonic() - started:.1f} s; screenshots in {shots}")


def test_report_zip_holds_every_result(reports, tiny_run):
    names = {p.name for p in reports["zip"].parent.rglob("*") if p.is_file()}
    assert {Path(p).name for p in expected_results(tiny_run)} <= names
