"""Where the time goes: observations computed from the numbers."""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Record
from benchmarks.serving.targets import level_of


def _median_of(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def findings(sections: Record) -> list[str]:
    """Where the time goes, computed from the numbers (one bullet per observation)."""
    out: list[str] = []
    fams = sections.get("topologies", {}).get("families", {})
    for family, entry in fams.items():
        s = entry.get("summary", {})
        aio, tep = s.get("all-in-one"), s.get("three-endpoints")
        if not (aio and tep):
            continue
        extra = tep["overhead_ms"] - aio["overhead_ms"]
        base = aio["e2e"]["median_ms"]
        out.append(
            f"**Topologies, {family} {entry['config']['size']}**: three-endpoints adds "
            f"{extra:.0f} ms per request to all-in-one's serving overhead "
            f"({tep['transfer_total_ms']:.0f} ms in the three stage calls' transfers, i.e. "
            f"about {tep['transfer_total_ms'] / 3:.0f} ms per HTTP hop with npz encoding and "
            f"checks), {100 * extra / base:.1f}% of all-in-one's {base:.0f} ms median."
            + (
                f" The raw ratio ({tep['ratio_to_all_in_one']:.3f}) differs from that mostly "
                "through the spread of model compute between requests (median "
                f"{tep['compute_ms']:.0f} vs {aio['compute_ms']:.0f} ms for the same models "
                "and inputs), i.e. load from other processes, not the topology."
                if abs(tep["compute_ms"] / aio["compute_ms"] - 1) > 0.03
                else ""
            )
        )
        first = [r for r in entry.get("requests", []) if r["round"] == 0]
        aio_first = next((r for r in first if r["topology"] == "all-in-one"), None)
        if aio_first:
            comp = sum(float(v.get("compute_ms", 0)) for v in aio_first["timings"].values())
            out.append(
                f"**First request, {family}**: all-in-one's first request took "
                f"{aio_first['e2e_ms']:.0f} ms ({comp:.0f} ms of model compute) against a "
                f"median of {base:.0f} ms ({aio['compute_ms']:.0f} ms) afterwards, although "
                "every stage warms up before /readyz: building each later stage calls "
                "`keras.utils.set_random_seed`, whose `tf.random.set_seed` clears "
                "TensorFlow's kernel cache, so the warmed functions of the stages built "
                "before it are instantiated again on the first real request (the "
                "three-endpoints services build one stage each and do not show it)."
            )
    kcv = sections.get("keras_cv", {})
    if kcv.get("steady"):
        per = kcv.get("keras_cv_model_ms", {})

        def med(key: str, part: str) -> float | None:
            calls = per.get(key, [])[1:]
            return _median_of([c.get(part, 0.0) for c in calls])

        u_xla, u_eager = (
            med("keras_cv_jit_true", "diffusion"),
            med("keras_cv_jit_false", "diffusion"),
        )
        d_xla, d_eager = med("keras_cv_jit_true", "decoder"), med("keras_cv_jit_false", "decoder")
        t_xla = med("keras_cv_jit_true", "text_encoder")
        t_eager = med("keras_cv_jit_false", "text_encoder")
        st = kcv["steady"]
        first_xla = kcv["first_call_ms"]["keras_cv_jit_true"]
        compile_s = (first_xla - st["keras_cv_jit_true"]["median_ms"]) / 1000
        faster = [
            name
            for name, x, e in (("text encoder", t_xla, t_eager), ("decoder", d_xla, d_eager))
            if x and e and x < 0.9 * e
        ]
        if u_xla and u_eager and d_xla and d_eager and t_xla and t_eager:
            out.append(
                f"**keras-cv**: its default is slower because XLA makes the UNet "
                f"{u_xla / u_eager:.1f}x slower on this CPU ({u_xla:.0f} vs {u_eager:.0f} ms for "
                f"all steps), while it makes the decoder {d_eager / d_xla:.1f}x faster "
                f"({d_xla:.0f} vs {d_eager:.0f} ms) and the text encoder "
                f"{t_eager / t_xla:.2f}x ({t_xla:.0f} vs {t_eager:.0f} ms); its first call "
                f"adds {compile_s:.0f} s "
                "of compilation. With jit_compile=False keras-cv makes the same model calls as "
                "ours (separate CFG: two batch-1 UNet calls per step), so the two differ by "
                "less than their run-to-run spread (p10-p90 "
                f"{st['ours']['p10_ms']:.0f}-{st['ours']['p90_ms']:.0f} vs "
                f"{st['keras_cv_jit_false']['p10_ms']:.0f}-{st['keras_cv_jit_false']['p90_ms']:.0f}"
                " ms)."
                + (
                    f" XLA per component (on for the {' and '.join(faster)}, off for the UNet) "
                    "would beat both on this CPU."
                    if faster
                    else ""
                )
            )
    conc = sections.get("concurrency", {}).get("families", {})
    for family, entry in conc.items():
        cb, nocb = entry["levels"]["cb"], entry["levels"]["nocb"]
        lone_cb, lone_nocb = level_of(cb, 1), level_of(nocb, 1)
        top = max((lv["clients"] for lv in cb), default=None)
        hi_cb = level_of(cb, 8) or (level_of(cb, top) if top else None)
        if not (lone_cb and hi_cb and lone_nocb):
            continue
        rows = (hi_cb.get("batching", {}).get("diffusion") or {}).get("mean_rows_per_call")
        step_ratio = (hi_cb["latency"].get("p50_ms") or 0) / (lone_cb["latency"].get("p50_ms") or 1)
        out.append(
            f"**Continuous batching, {family}**: at {hi_cb['clients']} clients the diffusion "
            f"service ran {rows} rows per UNet call (1 without CB), and a request took "
            f"{step_ratio:.1f}x a lone request's latency for {rows} times the rows, so "
            f"throughput went from {lone_nocb['images_per_s']:.2f} (one at a time) to "
            f"{hi_cb['images_per_s']:.2f} images/s ({hi_cb['completed_in_window']} requests "
            "completed in the window). Without CB throughput stays at one request's rate "
            "whatever the concurrency, and latency grows with the queue; a lone request costs "
            "the same either way (rows are never held back waiting for company)."
            + (
                " A UNet call here costs nearly rows x a one-row call: the sd-v1 UNet is "
                "compute-bound on 2 CPUs, so batching mostly saves per-call overhead and "
                "throughput gains are small (and these few samples are noisy)."
                if step_ratio > 0.8 * (rows or 1)
                else ""
            )
        )
    over = sections.get("overload", {})
    if over.get("overload") and over.get("moderate"):
        o, m = over["overload"], over["moderate"]
        refused = o.get("refused_by", {})
        cores_o, cores_m = o.get("cores_used", {}), m.get("cores_used", {})
        # The gateway's own early refusal (diffusion refused within its Retry-After) says
        # "it refused a request just now"; every other 503 came from a stage.
        early = sum(v for k, v in refused.items() if "just now" in k)
        by = ", ".join(f"{k}: {v}" for k, v in refused.items() if "just now" not in k)
        total = sum(refused.values())
        out.append(
            f"**Overload**: {early} of {total} refusals were decided by the gateway before "
            "any stage worked (the diffusion stage had refused a request within its "
            f"Retry-After); the rest came from the stages ({by}). A 503 took "
            f"{o['refused_latency'].get('p50_ms', 0):.0f} ms (p50) against "
            f"{o['ok_latency'].get('p50_ms', 0):.0f} ms for an image; goodput went from "
            f"{m['ok_images_per_s']:.2f} (moderate load) to {o['ok_images_per_s']:.2f} "
            f"images/s; CPU cores used: central {cores_m.get('central')} -> "
            f"{cores_o.get('central')}, text encoder {cores_m.get('text_encoder')} -> "
            f"{cores_o.get('text_encoder')}, diffusion {cores_m.get('diffusion')} -> "
            f"{cores_o.get('diffusion')}, and the benchmark's own clients "
            f"{cores_m.get('benchmark client')} -> {cores_o.get('benchmark client')} on the "
            f"same 2 CPUs ({o['clients']} clients, each retrying "
            f"{over.get('config', {}).get('pause_after_503_s', '?')} s after a refusal)."
        )
        others = {
            k: v for k, v in o["status_counts"].items() if k != "200" and not k.startswith("503")
        }
        if others:
            out.append(
                f"**Overload, other outcomes**: {others}: neither an image nor a 503 (the "
                "`other_outcomes` records in serving.json say what the client saw)."
            )
    wire = sections.get("wire", {}).get("shapes", {})
    for label, entry in wire.items():
        if label.startswith("sd-v1") and label.endswith("n=1"):
            t = entry["total"]
            out.append(
                f"**Wire, {label}**: {t['npz_fp32'] / 1e6:.2f} MB per request as npz fp32 "
                f"({t['npz_fp16'] / 1e6:.2f} MB with fp16 transport) vs "
                f"{t['b64_json_fp32'] / 1e6:.2f} MB as base64 JSON and "
                f"{t['json_lists'] / 1e6:.1f} MB as JSON lists; npz adds "
                f"{t['npz_fp32'] - t['raw_fp32']} bytes of headers to the raw tensors."
            )
    return out
