"""The latency regression check (`pathnas-infer regress`, `pathnas-edge regress`): bundles on the
workstation, a new release against the last release's baseline, the decision on given samples, and
the JUnit report. No test here depends on the machine's speed: where a verdict is asserted, the
timings are given."""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from bundle_helpers import (bundle, classify_run, cli, copy_bundle, flip_a_byte,  # noqa: F401 (fixtures)
                            imported_distributions, run_infer_capture, torch_free)


def test_regress_a_bundle_on_the_workstation_without_changing_it(bundle, tmp_path):
    """--update-baseline writes the workstation's own baseline beside the bundle (the signed manifest keeps
    the packager's), and a check uses it only when given --baseline. Only the plumbing is asserted here:
    whether a real timing passes depends on the machine (the decision is tested on given samples below)."""
    from pathnas.deploy.footprint import declared_requirements, requirement_closure
    from pathnas.deploy.manifest import verify

    copy = copy_bundle(bundle, tmp_path / "b")
    before = (copy / "manifest.json").read_bytes()
    measured = torch_free("pathnas.deploy.toolkit", "regress", copy, "--update-baseline", "--rounds", "1")
    assert measured.returncode == 0, measured.stderr
    own = tmp_path / "b.baseline.json"
    assert f"baseline written to {own}" in measured.stdout
    assert (copy / "manifest.json").read_bytes() == before and verify(copy).manifest  # the bundle is untouched
    baseline = json.loads(own.read_text())
    assert baseline["schema"] == "pathnas-latency-baseline/2" and baseline["bundle"] == "b"
    assert len(baseline["samples_ms"]) == len(baseline["reference_samples_ms"]) == 20
    # marked so that its use shows: 7x every sample (the ratios the verdict uses stay as measured)
    own.write_text(json.dumps({**baseline, **{k: [7 * v for v in baseline[k]]
                                              for k in ("samples_ms", "reference_samples_ms")}}))
    checked = torch_free("pathnas.deploy.toolkit", "regress", copy, "--baseline", own, "--rounds", "1", "--json",
                         "--junit", tmp_path / "j.xml")
    assert checked.returncode in (0, 1), checked.stderr
    verdict = json.loads(checked.stdout)
    assert verdict["method"] == "reference" and checked.returncode == (0 if verdict["passed"] else 1)
    assert verdict["baseline_median_ms"] == pytest.approx(7 * baseline["median_ms"], rel=1e-3)  # --baseline honoured
    assert 'tests="1"' in (tmp_path / "j.xml").read_text()
    allowed = requirement_closure(declared_requirements(("runtime",))) | {"pathnas-edge"}
    assert imported_distributions(checked) <= allowed, imported_distributions(checked) - allowed


@pytest.fixture()
def fake_timing(monkeypatch):
    """Replace the timing of model + reference with given samples: the CLI's decisions without a clock."""
    from pathnas.deploy import regress

    rng = np.random.default_rng(0)
    machine = rng.normal(1.0, 0.03, 100)  # the machine's speed, shared by the pair taken together
    base_model, base_ref = machine * rng.normal(2.0, 0.02, 100), machine * rng.normal(0.5, 0.005, 100)
    now = {"model": 1.0, "reference": 1.0}

    def measure(path, reference, profile, rounds=5, repeats=20):
        return list(base_model * now["model"]), list(base_ref * now["reference"])

    monkeypatch.setattr(regress, "measure_with_reference", measure)
    baseline = {"samples_ms": list(base_model), "reference_samples_ms": list(base_ref)}
    return now, baseline


def _junit_error(path: Path) -> str:
    return ET.parse(path).getroot().find("testcase/error").text


def _with_baseline(copy: Path, samples: dict) -> None:
    def edit(manifest):
        manifest["latency_baseline"].update(samples)

    from bundle_helpers import rehash

    rehash(copy, edit)


@pytest.mark.parametrize("model, machine, code, word", [(1.0, 1.0, 0, "passed"), (1.5, 1.5, 0, "passed"),
                                                        (1.2, 1.0, 1, "REGRESSED"), (1.2 * 0.7, 0.7, 1, "REGRESSED")])
def test_regress_verdicts_through_both_clis(bundle, tmp_path, fake_timing, model, machine, code, word):
    """A machine 1.5x slower than at packaging passes; the model itself 20% slower fails, on a fast machine too."""
    now, samples = fake_timing
    copy = copy_bundle(bundle, tmp_path / "b")
    _with_baseline(copy, samples)
    now.update(model=model, reference=machine)
    junit = tmp_path / "j.xml"
    got, out, err = run_infer_capture("regress", copy, "--junit", junit)
    assert got == code and out.startswith(word), err
    assert f"reference model at {machine:.2f}x its baseline time" in out
    assert ('failures="1"' in junit.read_text()) == (code == 1)
    got, out, _ = cli("regress", copy, "--json")
    assert got == code and json.loads(out)["passed"] is (code == 0)


@pytest.mark.parametrize("slower, code, word", [(1.75, 1, "REGRESSED"), (1.0, 0, "passed")])
def test_a_new_release_is_checked_against_the_last_releases_baseline(bundle, tmp_path, fake_timing, slower, code,
                                                                      word):
    """Issue 19: `regress NEW --baseline LAST_RELEASE_BASELINE` compares, normalised by the reference model as
    for the same model (here on a machine 30% slower than when the baseline was taken), and says whose baseline
    it is in the output, the JSON and the JUnit file; --same-model refuses such a baseline."""
    now, samples = fake_timing
    copy = copy_bundle(bundle, tmp_path / "new")
    own = json.loads((copy / "manifest.json").read_text())["latency_baseline"]
    last = tmp_path / "last-release.baseline.json"
    last.write_text(json.dumps({**own, **samples, "bundle": "release-1.4", "model_sha256": "ab" * 32}))
    now.update(model=slower * 1.3, reference=1.3)
    junit = tmp_path / "j.xml"
    got, out, err = run_infer_capture("regress", copy, "--baseline", last, "--junit", junit)
    assert got == code and out.startswith(word), err
    assert "the baseline belongs to another model, release-1.4 (sha256 abababababab)" in out
    assert "reference model at 1.30x its baseline time" in out
    case = ET.parse(junit).getroot().find("testcase")
    assert {p.get("name"): p.get("value") for p in case.iter("property")} == {
        "baseline_model": "release-1.4", "baseline_model_sha256": "ab" * 32}
    assert "another model, release-1.4" in case.find("system-out").text
    assert (case.find("failure") is not None) == (code == 1)
    got, out, _ = cli("regress", copy, "--baseline", last, "--json")
    verdict = json.loads(out)
    assert got == code and verdict["method"] == "reference"
    assert verdict["baseline_model"] == {"name": "release-1.4", "sha256": "ab" * 32}
    assert verdict["ratio"] == pytest.approx(slower, rel=0.02)
    got, _, err = run_infer_capture("regress", copy, "--baseline", last, "--same-model")
    assert got == 2 and "was measured for another model (release-1.4, sha256 abababababab)" in err
    # the bundle's own baseline is of its own model: nothing to say about another one
    _with_baseline(copy, samples)
    got, out, _ = cli("regress", copy, "--same-model", "--junit", junit)
    assert got == code and "another model" not in out and ET.parse(junit).find("testcase/properties") is None


def test_regress_refuses_and_reports_what_it_cannot_check(bundle, tmp_path, fake_timing):
    """Every way a check cannot run leaves a JUnit error report and exits 2; nothing outside the bundle is timed."""
    copy = copy_bundle(bundle, tmp_path / "b")
    other = tmp_path / "other.json"  # a baseline of another model, refused when a same-model check is asked for
    other.write_text(json.dumps({**json.loads((copy / "manifest.json").read_text())["latency_baseline"],
                                 "model_sha256": "0" * 64}))
    outside = tmp_path / "evil" / "other.onnx"
    outside.parent.mkdir()
    shutil.copy(copy / "model/onnxruntime-fp32/model.onnx", outside)

    def aim_outside(manifest):
        manifest["model"]["default"] = "../evil/other.onnx"

    cases = [
        (["--baseline", other, "--same-model"], "was measured for another model (model.onnx, sha256 000000000000)"),
        (["--baseline", tmp_path / "missing.json"], "missing.json does not exist"),
        (["--tolerance", "-1"], "--tolerance must be >= 0"),
    ]
    for args, message in cases:
        junit = tmp_path / "j.xml"
        junit.unlink(missing_ok=True)
        code, _, err = run_infer_capture("regress", copy, *args, "--junit", junit)
        assert code == 2 and message in err, err
        assert 'errors="1"' in junit.read_text() and message in _junit_error(junit)
    from bundle_helpers import rehash

    rehash(copy, aim_outside)
    for run in (lambda *a: run_infer_capture("regress", copy, *a)[::2], lambda *a: cli("regress", copy, *a)[::2]):
        junit = tmp_path / "j.xml"
        junit.unlink(missing_ok=True)
        code, err = run("--junit", junit)
        assert code == 2 and "model.default '../evil/other.onnx'" in err  # not timed, not "passed"
        assert 'errors="1"' in junit.read_text()
    flip_a_byte(copy / "model/onnxruntime-fp32/model.onnx")
    code, _, err = cli("regress", copy)
    assert code == 2 and "model.onnx: SHA-256 differs" in err  # a tampered bundle is not timed either


def test_regress_of_a_model_file_uses_the_reference_too(classify_run, tmp_path):
    """pathnas-edge regress MODEL.onnx: the baseline times the same fixed reference model bundles carry."""
    from pathnas.profiling.reference import reference_model_bytes
    import hashlib

    run, _ = classify_run
    baseline = tmp_path / "baseline.json"
    code, _, err = cli("regress", run / "export" / "model.onnx", "--baseline", baseline, "--update-baseline",
                       "--rounds", "1")
    assert code == 0, err
    data = json.loads(baseline.read_text())
    assert data["reference_sha256"] == hashlib.sha256(reference_model_bytes()).hexdigest()
    assert len(data["reference_samples_ms"]) == len(data["samples_ms"]) == 20
    code, out, err = cli("regress", run / "export" / "model.onnx", "--baseline", baseline, "--rounds", "1", "--json")
    assert code in (0, 1) and json.loads(out)["method"] == "reference", err
    data["reference_sha256"] = "0" * 64
    baseline.write_text(json.dumps(data))
    junit = tmp_path / "j.xml"
    code, _, err = cli("regress", run / "export" / "model.onnx", "--baseline", baseline, "--junit", junit)
    assert code == 2 and "timed another reference model" in err and 'errors="1"' in junit.read_text()


# -- the regression decision, on given samples ----------------------------------------------------------

def _samples(seed: int, n: int = 100, drift: float = 0.0):
    """Model and reference samples as interleaved timing gives them: each pair shares the machine's speed
    of that moment (here drifting by ``drift`` over the run), each has its own small noise."""
    rng = np.random.default_rng(seed)
    machine = rng.normal(1.0, 0.05, n) * np.linspace(1.0, 1.0 + drift, n)
    return machine * rng.normal(2.0, 0.04, n), machine * rng.normal(0.4, 0.008, n)


def test_a_uniformly_slower_machine_is_not_a_regression_but_a_slower_model_is():
    from pathnas.deploy.regress_stats import compare, compare_normalized

    base_model, base_ref = _samples(0)
    cur_model, cur_ref = _samples(1)
    same = compare_normalized(cur_model, cur_ref, base_model, base_ref)
    assert same.passed and same.ratio == pytest.approx(1.0, abs=0.03) and same.method == "reference"
    slower_machine = compare_normalized(cur_model * 1.5, cur_ref * 1.5, base_model, base_ref)
    assert slower_machine.passed and slower_machine.machine_ratio == pytest.approx(1.5, rel=0.05)
    assert not compare(cur_model * 1.5, base_model).passed  # what the absolute check said: a false alarm
    slower_model = compare_normalized(cur_model * 1.2, cur_ref, base_model, base_ref)
    assert not slower_model.passed and slower_model.ci_low > 1.1 and slower_model.ratio == pytest.approx(1.2, rel=0.03)
    both = compare_normalized(cur_model * 1.2 * 0.6, cur_ref * 0.6, base_model, base_ref)  # on a faster machine
    assert not both.passed
    within = compare_normalized(cur_model * 1.05, cur_ref, base_model, base_ref)  # inside the 10% tolerance
    assert within.passed
    drifting = compare_normalized(*_samples(2, drift=0.4), base_model, base_ref)  # 40% slower by the run's end
    assert drifting.passed and "reference model at" in drifting.summary()
    with pytest.raises(ValueError, match="one sample each per timing pair"):
        compare_normalized(cur_model[:50], cur_ref, base_model, base_ref)


def test_judging_by_rounds_holds_the_speed_of_each_runtime_session():
    """Each round runs in fresh sessions, and a session has a speed of its own (here +-4%, the model's and the
    reference's apart): judged by rounds, that spread widens the interval instead of raising false alarms."""
    from pathnas.deploy.regress_stats import compare_normalized

    def rounds(seed: int, sessions_sd: float = 0.04, k: int = 10):
        rng = np.random.default_rng(seed)
        model, ref = _samples(seed, n=20 * k)
        own = np.repeat(rng.normal(1.0, sessions_sd, k), 20)  # the model's session, slower or faster than usual
        return model * own, ref

    base = rounds(0)
    verdicts = [compare_normalized(*rounds(seed), *base, round_size=20) for seed in range(1, 21)]
    assert all(v.passed for v in verdicts)
    assert all(not compare_normalized(m * 1.2, r, *base, round_size=20).passed for m, r in map(rounds, range(1, 21)))
    pooled = compare_normalized(*rounds(1), *base)  # the pairs alone do not see the sessions' spread
    by_rounds = compare_normalized(*rounds(1), *base, round_size=20)
    assert by_rounds.ci_high - by_rounds.ci_low > pooled.ci_high - pooled.ci_low
    # too few rounds to judge by: the pooled pairs decide
    assert compare_normalized(*rounds(1, k=2), *base, round_size=20).ci_low == pytest.approx(
        compare_normalized(*rounds(1, k=2), *base).ci_low)


def test_baselines_are_checked_before_they_are_trusted():
    from pathnas.deploy.device import DeviceSettings
    from pathnas.deploy.regress import check_baseline

    profile = DeviceSettings("x86-cpu-ort", "onnxruntime-cpu", "fp32", 2)
    good = {"schema": "pathnas-latency-baseline/2", "device": "x86-cpu-ort", "runtime": "onnxruntime-cpu",
            "threads": 2, "batch_size": 1, "samples_ms": [1.0] * 5, "reference_samples_ms": [0.5] * 5}
    check_baseline(good, profile)
    check_baseline({**good, "schema": "pathnas-latency-baseline/1", "reference_samples_ms": None}, profile)
    with pytest.raises(ValueError, match="one positive latency"):
        check_baseline({**good, "reference_samples_ms": [0.5] * 4}, profile)
    with pytest.raises(ValueError, match="samples_ms must list at least 5"):
        check_baseline({**good, "samples_ms": [1.0, True, 1.0, 1.0, 1.0]}, profile)


def test_junit_is_written_for_any_failure_of_the_check(tmp_path):
    from pathnas.deploy.junit import junit_on_error

    junit = tmp_path / "j.xml"
    with pytest.raises(RuntimeError), junit_on_error(junit, "model"):
        raise RuntimeError("the runtime crashed")
    assert 'errors="1"' in junit.read_text() and "RuntimeError: the runtime crashed" in junit.read_text()
