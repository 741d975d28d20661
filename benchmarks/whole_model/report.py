"""The whole-model report: end_to_end.json and end_to_end.md (rows, checks, a table per model and mode, the
generation tables, the targets), written from the (merged) results after every measurement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks.harness.checks import TOLERANCE, failure
from benchmarks.harness.markdown import mark, merged_runs, run_marks, table, versions_line
from benchmarks.harness.store import write_json
from benchmarks.whole_model.family import LOSS_TOKENS
from benchmarks.whole_model.rows import CONFIGS

Plotter = Callable[[dict, Path], list[str]]


def write_outputs(results: dict, out_dir: Path, plotter: Plotter | None = None) -> None:
    """The JSON and the Markdown, and with ``plotter`` the plots (a failure there is noted, not raised)."""
    write_json(out_dir / "end_to_end.json", results)
    if plotter is not None:
        try:
            results["plots"] = plotter(results, out_dir)
        except Exception as exc:  # plots are a convenience: never lose the tables over them
            results["plots_note"] = f"plots failed: {failure(exc)}"
        write_json(out_dir / "end_to_end.json", results)
    (out_dir / "end_to_end.md").write_text(markdown(results))


def cell(row: dict) -> str:
    """A timing cell: time and peak memory, or why there is none."""
    if row.get("status") != "ok":
        return row.get("status", "")
    return f"{row['ms']:.1f} ms, {row['peak_gib']:.2f} GiB"


def markdown(results: dict) -> str:
    env = results["env"]
    marks = run_marks(results)
    lines = [f"# End-to-end attention benchmark: {env['device_name']}", "",
             f"{versions_line(env)}, {env['dtype']}, {env['date']}. Command: `{env['command']}`", "",
             *merged_runs(results, marks),
             "Cells: median time of one run, and peak memory during it ("
             + ("allocated, weights included" if env["device"].startswith("cuda") else "resident-set growth, coarse")
             + "). Prefill: one "
             "forward under no_grad (Llama: the base model, without the LM head). Train: forward + backward, no "
             f"optimizer step, loss on the last {LOSS_TOKENS} positions, gradient checkpointing "
             f"{'on' if results['args']['checkpointing'] else 'off'}. Random weights.", ""]
    lines += ["## Rows", "", *row_lines(results)]
    lines += ["", "## Checks", "", "Output on a short input against an fp32 run of the reference row. Exact rows must "
              f"be within {TOLERANCE:g} x the reference's own error in {env['dtype']} (+1e-3); rows that fail are not "
              "timed.", "", *check_table(results, marks)]
    fell_back = {name: reasons for name, reasons in results["fallbacks"].items() if reasons}
    if fell_back:
        lines += ["", "Calls that ran on the reference path instead of the fused kernels: "
                  + "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in fell_back.items())]
    for name, info in results["families"].items():
        for mode in ("prefill", "train"):
            lines += timing_table(results, name, info, mode, marks)
    for prompt in dict.fromkeys(g.get("prompt") for g in results["generation"]):
        lines += generation_table([g for g in results["generation"] if g.get("prompt") == prompt], marks)
    lines += ["", "## Targets", ""] + [f"- {t}" for t in targets(results)]
    if results.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"[{Path(p).name}]({Path(p).name})" for p in results["plots"])]
    elif results.get("plots_note"):
        lines += ["", results["plots_note"]]
    lines += ["", f"Run time {results.get('elapsed_s', '?')} s."]
    return "\n".join(lines) + "\n"


def row_lines(results: dict) -> list[str]:
    """Each row's summary and, for ours, its options on each model."""
    lines = []
    for config in dict.fromkeys(c for per_family in results["configs"].values() for c in per_family):
        where = {f: per_family[config] for f, per_family in results["configs"].items() if config in per_family}
        options = "; ".join(f"{f}: " + (", ".join(f"{k}={v}" for k, v in info["options"].items()) or "defaults")
                            for f, info in where.items() if CONFIGS[config].variant)
        lines.append(f"- `{config}`: {next(iter(where.values()))['summary']}" + (f" ({options})" if options else ""))
    return lines


def check_table(results: dict, marks: dict[str, str]) -> list[str]:
    dtype = results["env"]["dtype"]
    header = ["model", "config", "reference", "mode", "tokens", "exact", "rel err vs fp32",
              f"reference ({dtype}) vs fp32", f"rel diff vs reference ({dtype})", "status"]
    rows = []
    for c in results["checks"]:
        errors = [f"{c[k]:.2e}" if isinstance(c.get(k), float) else "" for k in
                  ("rel_err_vs_fp32", "reference_rel_err_vs_fp32", "rel_diff_vs_reference")]
        rows.append([c["family"], c["config"], c["reference"], c["mode"], c["tokens"], "yes" if c["exact"] else "no",
                     *errors, c["status"] + mark(c, marks)])
    return table(header, rows, align="llllrlrrrl")


def timing_table(results: dict, name: str, info: dict, mode: str, marks: dict[str, str]) -> list[str]:
    """The table of model ``name`` in ``mode``: a row per config, a column per length; none if not measured."""
    rows = [r for r in results["rows"] if r["family"] == name and r["mode"] == mode]
    if not rows:
        return []
    lengths = sorted({r["tokens"] for r in rows})
    params = f", {info['params'] / 1e6:.3g}M parameters" if info.get("params") else ""
    body = []
    for config in dict.fromkeys(r["config"] for r in rows):
        by_len = {r["tokens"]: r for r in rows if r["config"] == config}
        body.append([config, *(cell(by_len[n]) + mark(by_len[n], marks) if n in by_len else "" for n in lengths)])
    return ["", f"## {info['title']}{params}: {mode}", "",
            *table(["config", *(f"{n} tokens" for n in lengths)], body, align="l" + "r" * len(lengths))]


def generation_table(gens: list[dict], marks: dict[str, str]) -> list[str]:
    """The Markdown lines of the generation rows after one prompt length."""
    points_at = sorted({p["generated"] for g in gens for p in g["points"]})
    body = []
    for g in gens:
        config = g["config"] + mark(g, marks)
        if g["status"] != "ok":
            body.append([config, g["status"], "", *([""] * len(points_at))])
            continue
        points = {p["generated"]: p for p in g["points"]}
        cells = [f"{points[m]['tokens_per_s']:.0f} tok/s, {points[m]['cache_mib']:.4g} MiB"
                 + (f", {points[m]['peak_gib']:.2f} GiB" if points[m]["peak_gib"] is not None else "")
                 if m in points else "" for m in points_at]
        body.append([config, f"{g['prefill_ms']:.0f}", f"{g['after_prefill']['cache_mib']:.4g} MiB", *cells])
    header = ["config", "prefill ms", "cache after prefill", *(f"after {m} new" for m in points_at)]
    return ["", f"## Generation: Llama, {gens[0].get('prompt')}-token prompt, greedy, batch 1", "",
            "Each cell: tokens/s over the stretch ending there, KV-cache MiB, peak GiB during the stretch.", "",
            *table(header, body, align="l" + "r" * (len(header) - 1))]


def targets(results: dict) -> list[str]:
    """The issue's targets, stated against what was measured."""
    def ms(config: str, tokens: int) -> tuple[float | None, str | None]:
        row = next((r for r in results["rows"] if r["family"] == "llama" and r["mode"] == "prefill"
                    and r["config"] == config and r["tokens"] == tokens), None)
        return (row["ms"], None) if row and row.get("status") == "ok" else (None, row["status"] if row else "not run")

    out = []
    for config, peer, goal, faster in (("sliding", "hf-sdpa", 2.0, True), ("sliding", "hf-sdpa-sliding", 3.0, True),
                                       ("flash", "hf-sdpa", 1.10, False)):
        (a, why_a), (b, why_b) = ms(config, 32768), ms(peer, 32768)
        if a is None or b is None:
            out.append(f"Prefill at 32768 tokens, {config} vs {peer}: n/a ({config}: {why_a or 'ok'}, {peer}: {why_b or 'ok'})")
        elif faster:
            out.append(f"Prefill at 32768 tokens: {config} {b / a:.2f}x faster than {peer} (target >= {goal:g}x): "
                       f"{'met' if b / a >= goal else 'not met'}")
        else:
            out.append(f"Prefill at 32768 tokens: {config} takes {a / b:.2f}x {peer}'s time (target <= {goal:.2f}): "
                       f"{'met' if a / b <= goal else 'not met'}")
    gen = next((g for g in results["generation"] if g["config"] == "sliding" and g["status"] == "ok"), None)
    if gen and len(gen["points"]) > 1 and gen["points"][0]["peak_gib"] is not None:
        first, last = gen["points"][0], gen["points"][-1]
        flat = last["peak_gib"] <= first["peak_gib"] * 1.01 and last["cache_mib"] <= first["cache_mib"]
        out.append(f"Generation, sliding: peak {first['peak_gib']:.2f} -> {last['peak_gib']:.2f} GiB, cache "
                   f"{first['cache_mib']:.0f} -> {last['cache_mib']:.0f} MiB from {first['generated']} to "
                   f"{last['generated']} new tokens (target: flat): {'met' if flat else 'not met'}")
    else:
        out.append("Generation, sliding: n/a (not measured on CUDA)")
    longest = max((r["tokens"] for r in results["rows"] if r["family"] == "llama" and r["mode"] == "prefill"), default=None)
    if longest:
        (a, why_a), (b, why_b) = ms("sliding", longest), ms("hf-sdpa", longest)
        if a is None:
            out.append(f"Prefill at {longest} tokens, sliding: {why_a}")
        elif b is None:
            out.append(f"Prefill at {longest} tokens: sliding {a:.0f} ms; hf-sdpa: {why_b}")
        else:
            out.append(f"Prefill at {longest} tokens: sliding {a:.0f} ms, hf-sdpa {b:.0f} ms ({b / a:.2f}x)")
    return out
