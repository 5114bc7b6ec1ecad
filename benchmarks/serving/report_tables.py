"""One markdown table block per section of the serving report."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.harness import Record, fmt, ratio
from benchmarks.serving.common import TOPOLOGIES
from benchmarks.serving.targets import level_of


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**not met**")


def render_topologies(section: Record) -> list[str]:
    lines = [
        "Each round sends the same request (fixed seed) to every gateway in a rotating "
        "order, one request at a time; the first round(s) are warm-up (a gateway's first "
        "request is slow, see below). All three gateways are alive at once and interleaved "
        "(for sd-v1: two UNets, all-in-one's and the diffusion service that three-endpoints "
        "and hybrid share), unless the layout line says otherwise. Stage columns are "
        "medians of the response's `timings`: total (q = queue, c = compute, t = transfer, "
        "the stage call's wall time minus its queue and compute: HTTP, npz "
        "encode/decode, validation). *Overhead* is latency minus the three stages' model "
        "compute (batch waits, transfers, gateway work: validation, PNG encoding, JSON, "
        "client HTTP); *at equal compute* is the ratio to all-in-one with each topology's "
        "overhead added to all-in-one's compute, i.e. what the topology itself costs, "
        "free of load drift between requests.",
        "",
    ]
    for family, entry in section.get("families", {}).items():
        cfg = entry["config"]
        summary = entry["summary"]
        lines += [
            f"### {family} {cfg['size']}, n={cfg['n']}, {cfg['steps']} steps "
            f"({cfg['repeats']} rounds after {cfg['warmup']} warm-up)",
            "",
            "| topology | median ms | p10-p90 ms | vs all-in-one | at equal compute | "
            "compute ms | overhead ms | text encoder ms | diffusion ms | decoder ms | "
            "transfer ms | gateway other ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for topology in TOPOLOGIES:
            s = summary.get(topology)
            if not s:
                continue
            st = s["stages"]

            def cell(stage: str, st: Record = st) -> str:
                p = st[stage]
                return (
                    f"{fmt(p['total_ms'])} (q {fmt(p['queue_ms'])}, c {fmt(p['compute_ms'])}, "
                    f"t {fmt(p['transfer_ms'])})"
                )

            lines.append(
                f"| {topology} | **{fmt(s['e2e']['median_ms'])}** | "
                f"{fmt(s['e2e']['p10_ms'])}-{fmt(s['e2e']['p90_ms'])} | "
                f"{fmt(s['ratio_to_all_in_one'], 3)} | {fmt(s.get('ratio_at_equal_compute'), 3)} | "
                f"{fmt(s.get('compute_ms'))} | {fmt(s.get('overhead_ms'))} | "
                f"{cell('text_encoder')} | "
                f"{cell('diffusion')} | {cell('decoder')} | {fmt(s['transfer_total_ms'])} | "
                f"{fmt(s['gateway_other_ms'])} |"
            )
        lines += [
            "",
            f"Layout: {entry.get('layout', 'interleaved')}. Same PNG bytes from every "
            f"topology and round: {'yes' if summary.get('_identical_images') else 'NO'}. "
            f"Execution strategy: {entry.get('execution', {}).get('diffusion')}. Start-up "
            f"(s until ready, processes loading concurrently): {entry.get('startup_ready_s')}. "
            f"RSS at the end, MiB: {entry.get('rss_mib')}.",
            "",
        ]
        first = [r for r in entry["requests"] if r["round"] == 0]
        if first:
            measured = {t: summary.get(t, {}).get("e2e", {}).get("median_ms") for t in TOPOLOGIES}
            lines += [
                "First request of each gateway (warm-up, not in the medians), ms: "
                + ", ".join(
                    f"{r['topology']} {fmt(r['e2e_ms'])} (median after: "
                    f"{fmt(measured.get(r['topology']))}; compute "
                    + ", ".join(f"{k} {fmt(v.get('compute_ms'))}" for k, v in r["timings"].items())
                    + ")"
                    for r in first
                )
                + ".",
                "",
            ]
    return lines


def render_keras_cv(section: Record) -> list[str]:
    s = section["settings"]
    steady = section["steady"]
    first = section["first_call_ms"]
    ratios = section["ratios"]
    rows = [
        ("ours: in-process all-in-one `Chain.generate`", "ours"),
        ("keras-cv `text_to_image`, jit_compile=False", "keras_cv_jit_false"),
        ("keras-cv `text_to_image`, jit_compile=True (default)", "keras_cv_jit_true"),
    ]
    lines = [
        f"sd-v1 at {s['size']}, {s['steps']} steps, batch 1, guidance 7.5, in one child "
        "process. keras-cv's `StableDiffusion` object is given Keras models with our stages' "
        "weights (same random weights) through its `_tokenizer`, `_text_encoder`, "
        "`_diffusion_model` and `_decoder` attributes; for its default the models are "
        "compiled with `jit_compile=True`, as keras-cv's own properties do. Ours is the "
        "in-process `shared.pipeline.chain.Chain` (all-in-one, no HTTP, no PNG encoding; keras-cv "
        "returns arrays too) with the `auto` execution strategy "
        f"{section.get('ours_execution')}"
        + (
            f", XLA per model {section['ours_components']} (keras-cv gets its own text "
            "encoder and decoder, so its setting decides theirs)"
            if section.get("ours_components")
            else ""
        )
        + ". Ours and keras-cv jit_compile=False alternate; "
        "jit_compile=True runs last (its first call compiles).",
        "",
        "| run | first call ms | steady median ms | p10-p90 ms | n | vs ours |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ours = steady["ours"]["median_ms"]
    for label, key in rows:
        st = steady[key]
        lines.append(
            f"| {label} | {fmt(first.get(key))} | **{fmt(st['median_ms'])}** | "
            f"{fmt(st['p10_ms'])}-{fmt(st['p90_ms'])} | {st['n']} | "
            f"{fmt(ratio(st['median_ms'], ours), 2)}x |"
        )
    lines += [
        "",
        f"Ours / keras-cv default: **{fmt(ratios['ours_vs_keras_cv_default'], 3)}**; ours / "
        f"keras-cv jit_compile=False: **{fmt(ratios['ours_vs_keras_cv_jit_false'], 3)}**; "
        f"keras-cv's best setting here: {ratios['keras_cv_best']}. XLA in effect per model "
        "(keras-cv's, in its jit_compile=True run): "
        f"{section.get('xla_effective')}. Building and warming our stages took "
        f"{section.get('ours_build_and_warm_s')} s.",
        "",
        "Where the time goes (medians, ms): model calls inside keras-cv (summed "
        "`predict_on_batch` per model, per `text_to_image`) and our stages' compute:",
        "",
        "| run | text encoder | UNet (all steps) | decoder |",
        "|---|---:|---:|---:|",
    ]
    for key in ("keras_cv_jit_false", "keras_cv_jit_true"):
        calls = section["keras_cv_model_ms"].get(key, [])
        steady_calls = calls[1:] or calls  # the first one traced/compiled
        if steady_calls:
            med = {
                k: float(np.median([c.get(k, 0.0) for c in steady_calls]))
                for k in ("text_encoder", "diffusion", "decoder")
            }
            lines.append(
                f"| {key.replace('_', ' ')} | {fmt(med['text_encoder'])} | "
                f"{fmt(med['diffusion'])} | {fmt(med['decoder'])} |"
            )
    ours_t = section.get("ours_stage_timings", [])[1:]
    if ours_t:
        med = {
            k: float(np.median([t.get(k, {}).get("compute_ms", 0.0) for t in ours_t]))
            for k in ("text_encoder", "diffusion", "decoder")
        }
        lines.append(
            f"| ours (stage compute) | {fmt(med['text_encoder'])} | {fmt(med['diffusion'])} | "
            f"{fmt(med['decoder'])} |"
        )
    return lines


def render_concurrency(section: Record) -> list[str]:
    lines = [
        "Closed-loop clients (each sends its next request when the previous answers) "
        "against a three-endpoints gateway; the diffusion service runs with "
        "`SDSERVE_CONTINUOUS_BATCHING=true` (CB) or `false`, everything else default "
        "(`SDSERVE_MAX_BATCH=8`). Per level: a warm-up period, then a window; throughput "
        "counts images of requests completed in the window, latency is over those requests "
        "(p95 of few samples is close to their max). The warm-up stretches to at least one "
        "expected latency (clients x a lone request's) so the closed loop is in its steady "
        "state, and the window to a multiple of it (see below); levels whose expected "
        "latency exceeds 0.8x the 120 s client timeout are skipped. Requests still running "
        "at a window's end are cancelled (which also exercises cancellation). "
        "Rows/call is the diffusion service's mean batch (rows per UNet step call) in that "
        "level, from its `/metrics`.",
        "",
    ]
    for family, entry in section.get("families", {}).items():
        cfg = entry["config"]
        lines += [
            f"### {family} {cfg['size']}, {cfg['steps']} steps, n=1",
            "",
            "| clients | CB img/s | no-CB img/s | CB/no-CB | CB p50 ms | no-CB p50 ms | "
            "CB p95 ms | no-CB p95 ms | CB rows/call | no-CB rows/call | completed (CB, "
            "no-CB) | errors | load 1m |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        cb_levels, nocb_levels = entry["levels"]["cb"], entry["levels"]["nocb"]
        for clients in cfg["clients"]:
            cb, nocb = level_of(cb_levels, clients), level_of(nocb_levels, clients)
            if not cb and not nocb:
                lines.append(f"| {clients} | skipped | | | | | | | | | | | |")
                continue

            def g(level: Record | None, *path: str) -> Any:
                value: Any = level
                for p in path:
                    value = value.get(p) if isinstance(value, dict) else None
                return value

            errors = {}
            for tag, level in (("CB", cb), ("no-CB", nocb)):
                if level and level["errors"]:
                    errors[tag] = level["errors"]
            lines.append(
                f"| {clients} | **{fmt(g(cb, 'images_per_s'), 2)}** | "
                f"**{fmt(g(nocb, 'images_per_s'), 2)}** | "
                f"{fmt(ratio(g(cb, 'images_per_s'), g(nocb, 'images_per_s')), 2)} | "
                f"{fmt(g(cb, 'latency', 'p50_ms'), 0)} | {fmt(g(nocb, 'latency', 'p50_ms'), 0)} | "
                f"{fmt(g(cb, 'latency', 'p95_ms'), 0)} | {fmt(g(nocb, 'latency', 'p95_ms'), 0)} | "
                f"{fmt(g(cb, 'batching', 'diffusion', 'mean_rows_per_call'), 2)} | "
                f"{fmt(g(nocb, 'batching', 'diffusion', 'mean_rows_per_call'), 2)} | "
                f"{fmt(g(cb, 'completed_in_window'))}, {fmt(g(nocb, 'completed_in_window'))} | "
                f"{errors or 'none'} | "
                f"{fmt(g(cb, 'load_1m_before'), 2)}, {fmt(g(nocb, 'load_1m_before'), 2)} |"
            )
        names: list[str] = []
        for level in cb_levels + nocb_levels:
            for name in level.get("cores_used", {}):
                if name not in names:
                    names.append(name)
        lines += [
            "",
            f"Diffusion service: {entry.get('diffusion_info', {}).get('execution')}. Warm-up "
            f"and window per level (s): CB {[(lv['warmup_s'], lv['window_s']) for lv in cb_levels]}"
            f", no-CB {[(lv['warmup_s'], lv['window_s']) for lv in nocb_levels]}. RSS at the "
            f"end, MiB: {entry.get('rss_mib_at_end')}.",
            "",
            "CPU cores used per process over each level (warm-up + window), where the time "
            "goes across processes:",
            "",
            "| clients | mode | " + " | ".join(names) + " |",
            "|---:|---|" + "---:|" * len(names),
        ]
        for clients in cfg["clients"]:
            for mode, levels in (("CB", cb_levels), ("no-CB", nocb_levels)):
                level = level_of(levels, clients)
                if level and level.get("cores_used"):
                    cores = level["cores_used"]
                    lines.append(
                        f"| {clients} | {mode} | "
                        + " | ".join(fmt(cores.get(n), 2) for n in names)
                        + " |"
                    )
        lines.append("")
    return lines


def render_overload(section: Record) -> list[str]:
    cfg = section["config"]
    lines = [
        f"tiny {cfg['size']}, {cfg['steps']} steps, three-endpoints, "
        f"`SDSERVE_QUEUE_SIZE={cfg['queue_size']}` on every process. Moderate load: "
        f"{cfg['moderate_clients']} closed-loop clients for {cfg['moderate_s']} s. Overload: "
        f"{cfg['overload_clients']} closed-loop clients for {cfg['overload_s']} s (at most "
        f"{cfg['max_requests']} requests; a client pauses {cfg['pause_after_503_s']} s after a "
        "refusal instead of honouring Retry-After, to keep the pressure on). Every request "
        "runs to its answer or the 120 s client timeout (no cancellation).",
        "",
        "| phase | clients | requests | status counts | refused by | 200 p50 / p95 ms | "
        "503 p50 / p95 ms | images/s | load 1m |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for phase in ("moderate", "overload"):
        p = section[phase]
        lines.append(
            f"| {phase} | {p['clients']} | {p['requests']} | {p['status_counts']} | "
            f"{p.get('refused_by') or '—'} | "
            f"{fmt(p['ok_latency'].get('p50_ms'), 0)} / {fmt(p['ok_latency'].get('p95_ms'), 0)} | "
            f"{fmt(p['refused_latency'].get('p50_ms'), 0)} / "
            f"{fmt(p['refused_latency'].get('p95_ms'), 0)} | {fmt(p['ok_images_per_s'], 2)} | "
            f"{fmt(p.get('load_1m'), 2)} |"
        )
    lines += [
        "",
        "CPU cores used per process during each phase (from /proc/<pid>/stat; the 2 CPUs "
        "are shared with everything else on the machine):",
        "",
        "| phase | " + " | ".join(section["moderate"].get("cores_used", {})) + " |",
        "|---|" + "---:|" * len(section["moderate"].get("cores_used", {})),
    ]
    for phase in ("moderate", "overload"):
        cores = section[phase].get("cores_used", {})
        lines.append(f"| {phase} | " + " | ".join(fmt(v, 2) for v in cores.values()) + " |")
    lines += [
        "",
        f"A request after the overload: HTTP {section.get('after_status')}.",
        "",
        "Resident memory (VmRSS from /proc/<pid>/status, sampled every 0.25 s), MiB:",
        "",
        "| process | idle median | moderate median / max | overload median / max | "
        "after median | overload max / moderate max | VmHWM at end |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in section["rss"].items():

        def m(phase: str, key: str, entry: Record = entry) -> str:
            return fmt(entry.get(phase, {}).get(key))

        lines.append(
            f"| {name} | {m('idle', 'median_mib')} | {m('moderate', 'median_mib')} / "
            f"{m('moderate', 'max_mib')} | {m('overload', 'median_mib')} / "
            f"{m('overload', 'max_mib')} | {m('after', 'median_mib')} | "
            f"**{fmt(section['rss_growth'].get(name), 3)}** | "
            f"{fmt(entry.get('vm_hwm_mib_at_end'))} |"
        )
    return lines


def render_wire(section: Record) -> list[str]:
    lines = [
        "Bytes of the five bodies one text-to-image request sends between central and the "
        "stages (three-endpoints), computed by encoding random arrays of the real shapes "
        "with `shared.wire.encode_npz` (uncompressed npz; fp16 = float32 tensors sent as "
        "float16, images stay uint8) against JSON with each tensor base64-encoded in its own "
        "dtype (float32 as float32) and, for scale, JSON number lists. The prompt JSON to "
        "the text encoder (~100 bytes) is left out.",
        "",
    ]
    for label, entry in section["shapes"].items():
        lines += [
            f"### {label}",
            "",
            "| hop | tensors | raw bytes | npz fp32 | npz fp16 | base64 JSON fp32 | JSON lists |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in entry["hops"]:
            tensors = ", ".join(f"{k} {tuple(v)}" for k, v in row["tensors"].items())
            lines.append(
                f"| {row['hop']} | {tensors} | {fmt(row['raw_fp32'])} | {fmt(row['npz_fp32'])} "
                f"| {fmt(row['npz_fp16'])} | {fmt(row['b64_json_fp32'])} | "
                f"{fmt(row['json_lists'])} |"
            )
        t = entry["total"]
        lines += [
            f"| **total** | | {fmt(t['raw_fp32'])} | **{fmt(t['npz_fp32'])}** | "
            f"**{fmt(t['npz_fp16'])}** | **{fmt(t['b64_json_fp32'])}** | {fmt(t['json_lists'])} |",
            "",
            f"base64 JSON / npz fp32 = {fmt(entry['b64_json_over_npz_fp32'], 3)}; npz fp16 / "
            f"fp32 = {fmt(entry['npz_fp16_over_fp32'], 3)}. Biggest body, best of 5: "
            f"{entry['codec_of_biggest_body']}.",
            "",
        ]
    return lines


def render_locust(section: Record) -> list[str]:
    if section.get("status", "").startswith("skipped"):
        return [section["status"]]
    lines = [
        f"`{section.get('command')}` against a tiny three-endpoints stack (exit code "
        f"{section.get('exit_code')}).",
        "",
        "| name | requests | failures | median ms | p95 ms | mean ms | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in section.get("stats", []):
        lines.append(
            f"| {row['Name']} | {row['Request Count']} | {row['Failure Count']} | "
            f"{row['Median Response Time']} | {row['95%']} | "
            f"{fmt(float(row['Average Response Time'] or 0), 0)} | "
            f"{fmt(float(row['Requests/s'] or 0), 2)} |"
        )
    return lines
