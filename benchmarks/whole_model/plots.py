"""The whole-model plots: per model, time and peak memory against length (log-log) for prefill and train;
the generation curves (tokens/s, cache, peak memory against tokens generated)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import plots


def hf_dashed(config: str) -> dict[str, str]:
    """transformers' rows dashed, ours solid."""
    return {"linestyle": "--" if config.startswith("hf-") else "-"}


def write_plots(results: dict, out_dir: Path) -> list[str]:
    """end_to_end_MODEL.png per model measured and end_to_end_generation.png; their paths."""
    why_not = plots.missing()
    if why_not:
        results["plots_note"] = why_not
        print(why_not, flush=True)
        return []
    written = []
    for name, info in results["families"].items():
        rows = [r for r in results["rows"] if r["family"] == name and r.get("status") == "ok"]
        modes = [m for m in ("prefill", "train") if any(r["mode"] == m for r in rows)]
        if not modes:
            continue
        fig, axes = plots.figure(len(modes), 2, size=(12, 4.5 * len(modes)))
        for i, mode in enumerate(modes):
            series: dict[str, list[tuple[int, float, float]]] = {}
            for r in sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["tokens"]):
                series.setdefault(r["config"], []).append((r["tokens"], r["ms"], r["peak_gib"]))
            for j, what in enumerate(("time (ms)", "peak memory (GiB)")):
                curves = {config: [(p[0], p[j + 1]) for p in points] for config, points in series.items()}
                plots.draw(axes[i][j], curves, "tokens", what, f"{info['title']}: {mode}: {what.split(' (')[0]}",
                           style=hf_dashed)
        written.append(plots.save(fig, out_dir / f"end_to_end_{name}.png"))
    gens = [g for g in results["generation"] if g["status"] == "ok" and g["points"]]
    gens = [g for g in gens if g["prompt"] == gens[0]["prompt"]]  # one prompt length per plot (--merge)
    if gens:
        fig, axes = plots.figure(1, 3, size=(16, 4.5))
        title = f"after a {gens[0]['prompt']}-token prompt"
        for ax, (key, what) in zip(axes[0], (("tokens_per_s", "tokens/s"), ("cache_mib", "KV cache (MiB)"),
                                             ("peak_gib", "peak memory (GiB)")), strict=True):
            curves = {g["config"]: [(p["generated"], p[key]) for p in g["points"]] for g in gens}
            plots.draw(ax, curves, "generated tokens", what, f"{title}: {what.split(' (')[0]}", log_y=False,
                       style=hf_dashed)
        written.append(plots.save(fig, out_dir / "end_to_end_generation.png"))
    return written
