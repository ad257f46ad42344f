"""Markdown tables of one serve_bench run: throughput and latency per server and concurrency,
lokal's ratios to the anchors, and prefix reuse."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness import fmt, median, ratio

Result = Mapping[str, Any]


def _level_table(results: Sequence[Result]) -> list[str]:
    lines = ["| clients | server | requests | completion tok/s | TTFT p50 (ms) | TTFT p95 (ms) "
             "| ITL p50 (ms) | ITL p95 (ms) | errors | ended early | other load (cores) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    clients = sorted({lv["clients"] for r in results for lv in r["levels"]})
    for c in clients:
        for r in results:
            for lv, s in zip(r["levels"], r["level_stats"], strict=True):
                if lv["clients"] == c:
                    lines.append(
                        f"| {c} | {r['name']} | {lv['requests']} | {fmt(s['tps'])} | "
                        f"{fmt(s['ttft_p50_ms'], 0)} | {fmt(s['ttft_p95_ms'], 0)} | "
                        f"{fmt(s['itl_p50_ms'])} | {fmt(s['itl_p95_ms'])} | "
                        f"{len(lv['errors'])} | {lv['short']} | "
                        f"{fmt(lv['foreign_cores'], 2)} |")
    return lines


def _ratio_table(results: Sequence[Result]) -> list[str]:
    by_name = {r["name"]: r for r in results}
    lokal = by_name.get("lokal")
    anchors = [r for r in results if r["name"] != "lokal"]
    if lokal is None or not anchors:
        return []
    head = "| clients |" + "".join(f" tok/s ÷ {a['name']} | TTFT p95 ÷ {a['name']} |"
                                   for a in anchors)
    lines = [head, "|---:|" + "---:|---:|" * len(anchors)]

    def stats_at(r: Result, c: int) -> Mapping[str, float] | None:
        for lv, s in zip(r["levels"], r["level_stats"], strict=True):
            if lv["clients"] == c:
                return s  # type: ignore[no-any-return]
        return None

    for lv in lokal["levels"]:
        c = lv["clients"]
        mine = stats_at(lokal, c)
        assert mine is not None
        cells = []
        for a in anchors:
            theirs = stats_at(a, c)
            if theirs is None:
                cells += ["n/a", "n/a"]
            else:
                cells += [ratio(mine["tps"], theirs["tps"]) + _spread(lokal, a, c),
                          ratio(mine["ttft_p95_ms"], theirs["ttft_p95_ms"])]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def _spread(lokal: Result, anchor: Result, clients: int) -> str:
    """' (min-max over N rounds)': lokal's tok/s over the anchor's, round by round (each
    round ran both back to back), beside the ratio of the pooled runs."""
    mine = (lokal.get("run_tps") or {}).get(clients) or []
    theirs = (anchor.get("run_tps") or {}).get(clients) or []
    ratios = sorted(m / t for m, t in zip(mine, theirs, strict=False) if t > 0)
    if len(ratios) < 2:
        return ""
    return (f" ({ratios[0]:.2f}-{ratios[-1]:.2f}x, median {median(ratios):.2f}x over "
            f"{len(ratios)} rounds)")


def _prefix_table(results: Sequence[Result]) -> list[str]:
    lines = ["| server | turn-2 prompt tokens | turn 1 TTFT (ms) | warm turn 2 TTFT (ms) | "
             "turn 2 after 1 unrelated long prompt (ms) | cold turn 2, fresh server (ms) | "
             "warm ÷ cold | cached tokens reported (warm) | other load (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        reps = r["prefix"]
        if not reps:
            continue

        def med(key: str, reps: Sequence[Mapping[str, Any]] = reps) -> float:
            return median([float(p[key]) for p in reps if p[key] == p[key]]) * 1000

        tokens = sorted({p["turn2_prompt_tokens"] for p in reps} - {None})
        cached = sorted({p["warm_cached_tokens"] for p in reps} - {None})
        lines.append(
            f"| {r['name']} | {', '.join(map(str, tokens)) or 'n/a'} | "
            f"{fmt(med('turn1_ttft_s'), 0)} | {fmt(med('warm_ttft_s'), 0)} | "
            f"{fmt(med('evicted_ttft_s'), 0)} | {fmt(med('cold_ttft_s'), 0)} | "
            f"{ratio(med('warm_ttft_s'), med('cold_ttft_s'))} | "
            f"{', '.join(map(str, cached)) or 'not reported'} | "
            f"{fmt(max(p['foreign_cores'] for p in reps), 2)} (max) |")
    return lines


def render_markdown(facts: Mapping[str, str], results: Sequence[Result]) -> str:
    lines = [f"- date: {facts['date']}",
             f"- CPU: {facts['cpu']}, {facts['cores']} cores",
             f"- load average (1/5/15 min) before: {facts['load_average']}, after: "
             f"{facts.get('load_average_after', 'n/a')}",
             f"- lokal: {facts['lokal']}",
             f"- llama-cpp-python {facts['llama_cpp_python']}; llama.cpp vendored commit "
             f"{facts.get('llama_cpp_commit', 'n/a')}; llama-server "
             f"{facts.get('llama_server', 'not run')}",
             f"- model: {facts['gguf']}",
             f"- threads {facts['threads']}, context per request {facts['context']}, "
             f"slots {facts.get('slots', 'n/a')}; {facts['max_tokens']} completion tokens per "
             f"request, temperature 0, seed 1234; {facts['rounds']} requests per client, at "
             f"least {facts['min_requests']} per level; every level run "
             f"{facts.get('interleave', '1')} times per server, servers in alternating order, "
             "requests pooled", ""]
    lines += ["Aggregate completion tokens/s = completion tokens of all requests of a level ÷ "
              "wall time of the level (its runs added up); TTFT = request sent to first content "
              "chunk; ITL = gaps between content chunks, all requests pooled; other load = "
              "CPU cores used by processes other than the benchmark and the server under test "
              "meanwhile (noise; 0 = quiet machine).", ""]
    lines += [*_level_table(results), ""]
    ratios = _ratio_table(results)
    if ratios:
        lines += ["lokal ÷ anchor (tok/s: higher is better for lokal; TTFT: lower is better):",
                  "", *ratios, ""]
    prefix = _prefix_table(results)
    if len(prefix) > 2:
        lines += ["Prefix reuse, medians over the repetitions:", "", *prefix, ""]
    lines += ["Servers as run:", ""]
    for r in results:
        lines.append(f"- {r['name']} (ready in {fmt(r['started_in_s'])} s): `{r['flags']}`")
        for note in r["skipped"]:
            lines.append(f"  - skipped: {note}")
        errors = [e for lv in r["levels"] for e in lv["errors"]]
        errors += [e for p in r["prefix"] for e in p["errors"]]
        if errors:
            lines.append(f"  - {len(errors)} errors, first: {errors[0]}")
    return "\n".join(lines)
