"""MODEL_CARD.md of a bundle: intended use, training data (plainly flagged when synthetic), metrics,
limitations, written from the bundle's manifest. Torch-free."""
from __future__ import annotations

TASK_WORDS = {"classify": "classification", "segment": "segmentation"}


def figure(value, spec: str = ".2f", missing: str = "n/a") -> str:
    """A figure as text, or ``missing`` where it was not measured (the card's and the validation table's)."""
    return missing if value is None else format(value, spec)


def _is_synthetic(dataset: dict) -> bool:
    return "synth" in f"{dataset.get('description', '')} {dataset.get('generator', '')}".lower()


def model_card(manifest: dict, dataset: dict | None, retrain: dict | None) -> str:
    """MODEL_CARD.md: intended use, training data (plainly flagged when synthetic), metrics, limitations."""
    profile, validation = manifest["profile"], manifest["validation"]
    lines = [
        f"# Model card: {manifest['task']} model {manifest['architecture']}", "",
        "## Intended use",
        f"Research and decision support: {TASK_WORDS[manifest['task']]} of H&E histopathology images into "
        f"{', '.join(manifest['classes'])}, on {profile['name']} ({profile['description']}). "
        "Not a medical device; every output needs review by a qualified pathologist.", "",
        "## Training data",
    ]
    if not dataset:
        lines.append("The data set summary was not recorded with the run.")
    else:
        splits = f"splits {dataset.get('split_sizes')} (train / val / test)"
        if _is_synthetic(dataset):
            lines.append(f"**Synthetic data**: {dataset.get('description')} (generator {dataset.get('generator')}, "
                         f"images of {dataset.get('image_size')} px, {splits}). This model has never seen a real "
                         "patient image and must not be used on one clinically.")
        else:
            lines.append(f"{dataset.get('task')} data from {dataset.get('root')}: {splits}."
                         + (f" {dataset['description']}" if dataset.get("description") else ""))
    lines += ["", "## Metrics"]
    if retrain:
        metric = retrain.get("metric_name", "metric")
        val, test = retrain.get("val") or {}, retrain.get("test") or {}
        lines.append(f"Retrained model: validation {metric} {figure(val.get(metric))}; test {metric} "
                     f"{figure(test.get(metric))} (the test split is read once, after model selection on validation).")
    else:
        lines.append("**Not retrained**: the model keeps the weights it inherited from the search supernet; "
                     "no test-split figure was measured.")
    lines.append(f"Packaged artifacts against the PyTorch model on {figure(validation.get('images'), 'd')} "
                 f"{validation.get('split') or ''} images:")
    for r in validation["rows"]:
        lines.append(f"- {r['backend']} {r['precision']}: top-1 agreement with PyTorch {figure(r.get('top1_agreement_pct'))}%, "
                     f"{r.get('metric_name')} {figure(r.get('metric'))}, latency p50 {figure(r.get('latency_p50_ms'), '.3f')} "
                     "ms at batch 1 on the validation machine")
    baseline = manifest.get("latency_baseline")
    if baseline:
        lines.append(f"Latency baseline on {baseline['device']}: median {baseline['median_ms']:.3f} ms, "
                     f"p90 {baseline['p90_ms']:.3f} ms per image ({baseline['runtime']}, {baseline['threads']} threads).")
    mpp = (dataset or {}).get("mpp")
    resolution = (f"Trained at {mpp:.3g} µm per pixel: slides that state their resolution are read at the pyramid "
                  "level and scale that match it; a slide that states none is read at full resolution, as its "
                  "result row says." if mpp else
                  "The training resolution (µm per pixel) was not declared: slides are read at full resolution.")
    lines += ["", "## Using it",
              "- `pathnas-infer verify BUNDLE` checks every file against the manifest (and, with `--trusted-key "
              "KEY.pub`, the packager's signature) before anything runs; `pathnas-infer` does the same itself.",
              "- `pathnas-infer BUNDLE SLIDES/ --out DIR` runs a folder of slides (again: only those not done "
              "yet) and writes per slide GeoJSON that QuPath opens, WSInfer's CSV and a heatmap, and "
              "run_metadata.json for the run. `config.json` is this model's WSInfer config.",
              "- `pathnas-infer regress BUNDLE` re-checks the latency on the target against the baseline above.",
              "", "## Limitations",
              f"- Inputs are preprocessed as in preprocess.json. {resolution} Other stains or scanners are out of "
              "scope until validated on them.",
              "- Latency figures hold for the stated device, runtime and threads only.",
              "- Trained and validated on the data above only; performance on other data is unknown."]
    return "\n".join(lines) + "\n"
