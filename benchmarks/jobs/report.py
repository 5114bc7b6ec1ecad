"""jobs.md from jobs.json: what was measured, on what, the tables, and a short reading."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Record, fmt, notes_block, ratio, section_block
from benchmarks.jobs.common import STORES

LABEL = {"memory": "memory", "redis": "Redis"}


def fmt_ms(value: Any) -> str:
    """Milliseconds with as many decimals as small values need."""
    if not isinstance(value, int | float):
        return fmt(value)
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    return fmt(float(value), 1)


def fmt_ratio(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}x"


# --------------------------------------------------------------------------- reading


def plural(level: str, word: str) -> str:
    return f"{level} {word}{'' if level == '1' else 's'}"


def store_reading(store: Record) -> list[str]:
    cfg = store["config"]
    calls = cfg["steps"] + 2
    life, lat = store["lifecycle"], store["latency"]
    levels = [str(c) for c in cfg["submitters"]]
    one, top = levels[0], levels[-1]
    mem_one, red_one, red_top = life["memory"][one], life["redis"][one], life["redis"][top]
    rates = "; ".join(
        f"{plural(level, 'submitter')}: memory "
        f"{fmt(life['memory'][level]['jobs_per_s_median'])} jobs/s, Redis "
        f"{fmt(life['redis'][level]['jobs_per_s_median'])} (Redis / memory "
        f"**{fmt(life['redis_vs_memory'][level], 3)}**)"
        for level in levels
    )
    notes = [
        f"**Store, job lifecycle** ({calls} store calls per job): {rates}. With "
        f"{plural(one, 'submitter')} a job takes {fmt_ms(mem_one['job_ms_median'])} ms in "
        f"memory and {fmt_ms(red_one['job_ms_median'])} ms in Redis, "
        f"{fmt_ms(red_one['job_ms_median'] / calls)} ms per call (a round trip to "
        f"redis-server running a Lua script). {plural(top, 'submitter')} overlap their calls "
        f"but reach only {fmt(red_top['jobs_per_s_median'])} jobs/s: the benchmark process, "
        "where the Redis client encodes, sends and parses (one event loop, at most one "
        f"core), used {fmt(red_top['benchmark_cores_median'], 2)} cores, redis-server "
        f"{fmt(store['redis_server_cores'].get(f'lifecycle {top}'), 2)}.",
    ]
    for level in (str(s) for s in cfg["subscribers"]):
        mem, red = lat["memory"][level], lat["redis"][level]
        r = lat["redis_vs_memory"][level]
        note = (
            f"**Event latency, {plural(level, 'subscriber')}**: a progress event reaches a "
            f"subscriber {fmt_ms(mem['delivery']['median_ms'])} ms (median; p95 "
            f"{fmt_ms(mem['delivery']['p95_ms'])} ms) after the runner's `update` call in "
            f"memory, {fmt_ms(red['delivery']['median_ms'])} ms (p95 "
            f"{fmt_ms(red['delivery']['p95_ms'])} ms) in Redis: Redis / memory "
            f"**{fmt_ratio(r['median_ms'])}** the median, **{fmt_ratio(r['p95_ms'])}** the p95."
        )
        if level != "1":
            note += (
                f" The last of the {level} has it after "
                f"{fmt_ms(mem['last_subscriber']['median_ms'])} ms (memory) and "
                f"{fmt_ms(red['last_subscriber']['median_ms'])} ms (Redis): one blocking "
                "read per job in the process feeds every subscriber, so the Redis cost "
                "hardly grows with their number; the writer's `update` takes "
                f"{fmt_ms(red['update_call']['median_ms'])} ms per call."
            )
        notes.append(note)
    return notes


def http_reading(http: Record) -> list[str]:
    cfg = http["config"]
    mem, red, r = http["memory"], http["redis"], http["redis_vs_memory"]
    m_rounds, r_rounds = mem["burst"]["jobs_per_s_rounds"], red["burst"]["jobs_per_s_rounds"]
    m_rate, r_rate = mem["burst"]["jobs_per_s_median"], red["burst"]["jobs_per_s_median"]
    overlap = min(m_rounds) <= max(r_rounds) and min(r_rounds) <= max(m_rounds)
    per_job_ms = 1000 / r_rate - 1000 / m_rate if m_rate and r_rate else None
    seq_m, seq_r = mem["sequential"], red["sequential"]
    added = seq_r["first_progress"]["median_ms"] - seq_m["first_progress"]["median_ms"]
    events = seq_m.get("events_per_job_median")
    steps = cfg["steps"]
    kinds = (
        f" (queued, {steps} progress, {steps} previews with a PNG each, done)"
        if events == 2 * steps + 2
        else ""
    )
    return [
        f"**Over HTTP, {cfg['burst']} jobs at once** ({cfg['size']}, {cfg['steps']} steps, "
        f"tiny): {fmt(m_rate, 2)} jobs/s with the memory store, {fmt(r_rate, 2)} with Redis "
        f"(Redis / memory **{fmt(r['burst_jobs_per_s'], 3)}**), i.e. "
        f"{fmt_ms(per_job_ms)} ms more per job (1 / jobs/s) with Redis. The rounds "
        f"{'overlap' if overlap else 'do not overlap'} (memory {fmt(min(m_rounds), 2)}-"
        f"{fmt(max(m_rounds), 2)}, Redis {fmt(min(r_rounds), 2)}-{fmt(max(r_rounds), 2)} "
        "jobs/s)"
        + (", so on this shared machine the ratio is a rough one" if overlap else "")
        + f". The gateway used {fmt(mem['burst']['cores_median'].get('gateway (memory)'), 2)}"
        f" cores with the memory store and "
        f"{fmt(red['burst']['cores_median'].get('gateway (redis)'), 2)} with Redis "
        f"(redis-server {fmt(red['burst']['cores_median'].get('redis-server'), 2)}).",
        f"**One job at a time**: the first progress event arrives "
        f"{fmt_ms(seq_m['first_progress']['median_ms'])} ms after the POST with the memory "
        f"store and {fmt_ms(seq_r['first_progress']['median_ms'])} ms with Redis (Redis / "
        f"memory **{fmt(r['sequential_first_progress_median'], 3)}**, "
        f"{'+' if added >= 0 else ''}{fmt_ms(added)} ms); the POST itself (202) takes "
        f"{fmt_ms(seq_m['post']['median_ms'])} vs {fmt_ms(seq_r['post']['median_ms'])} ms "
        f"and the whole job {fmt_ms(seq_m['done']['median_ms'])} vs "
        f"{fmt_ms(seq_r['done']['median_ms'])} ms (medians). A job's stream carried "
        f"{fmt(events, 0)} events{kinds}: each a store write, and in Redis a stream entry "
        "the subscriber reads back.",
    ]


def reading(sections: Record) -> list[str]:
    """A few sentences per section, computed from the numbers."""
    notes: list[str] = []
    store = sections.get("store", {})
    if "lifecycle" in store and "latency" in store:
        notes += store_reading(store)
    http = sections.get("http", {})
    if "redis_vs_memory" in http:
        notes += http_reading(http)
    if "latency" in store and "redis_vs_memory" in http:
        notes.insert(0, in_short(store, http))
    return notes


def in_short(store: Record, http: Record) -> str:
    ratios = [
        v for level in store["latency"]["redis_vs_memory"].values() for v in level.values() if v
    ]
    r, cfg = http["redis_vs_memory"], http["config"]
    subscribers = [str(n) for n in store["config"]["subscribers"]]
    first = str(store["config"]["submitters"][0])
    redis_ms = " and ".join(
        f"{fmt_ms(store['latency']['redis'][n]['delivery']['median_ms'])} ms with "
        f"{plural(n, 'subscriber')}"
        for n in subscribers
    )
    seq = {name: http[name]["sequential"]["first_progress"]["median_ms"] for name in STORES}
    return (
        f"**In short**: in process, Redis delivers an event {min(ratios):.0f}-"
        f"{max(ratios):.0f}x later than memory (medians and p95s above), still "
        f"only {redis_ms} (median), and a job's whole life of store calls costs "
        f"{fmt(ratio(1, store['lifecycle']['redis_vs_memory'][first]), 0)}x as much. End "
        "to end, where a job also runs the models, Redis / memory is "
        f"**{fmt(r['burst_jobs_per_s'], 2)}** in jobs/s and "
        f"**{fmt(r['sequential_first_progress_median'], 2)}** in time to the first progress "
        f"event ({'+' if seq['redis'] >= seq['memory'] else ''}"
        f"{fmt_ms(seq['redis'] - seq['memory'])} ms), on about the cheapest job a gateway "
        f"serves (tiny, {cfg['size']}, {cfg['steps']} steps); more steps and bigger models "
        "leave the store a smaller share."
    )


# --------------------------------------------------------------------------- sections


def render_store(section: Record) -> list[str]:
    cfg = section["config"]
    limits = section["store_limits"]
    server = section["redis_server"]
    lines = [
        "In this process, the real store classes (`central.jobs.open_store`) with the "
        f"gateway's default limits (max_jobs {limits['max_jobs']}, TTL "
        f"{fmt(limits['job_ttl_s'], 0)} s, lease {fmt(limits['job_lease_s'], 0)} s), the Redis "
        f"one on a local redis-server {server['version']} ({server['settings']}) over TCP "
        "on 127.0.0.1. One asyncio event loop runs "
        "the writers and the subscribers, as in a gateway, where the runner and the event "
        f"streams share one loop. {cfg['rounds']} rounds after a warm-up; each round runs every "
        "configuration on both stores, the configurations rotating and the stores taking "
        "turns to go first.",
        "",
        f"### Job lifecycle: create, {cfg['steps']} progress updates, finish",
        "",
        f"Each submitter runs whole jobs back to back for {fmt(cfg['duration_s'])} s per round "
        "(then finishes the one it is in): `create` (the queued event), "
        f"{cfg['steps']} x `update` (a progress event and the record's state, one per step, "
        "yielding to the event loop before each as the runner's writer waits for its step), "
        "`finish` (a done event carrying a 16 KiB base64 result, as a 64x64 PNG would). No "
        "previews and no subscribers. Jobs/s is the median over the rounds.",
        "",
        "| submitters | memory jobs/s | Redis jobs/s | Redis / memory | memory ms per job | "
        "Redis ms per job | jobs/s per round (memory; Redis) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    life = section["lifecycle"]
    for level in (str(c) for c in cfg["submitters"]):
        mem, red = life["memory"][level], life["redis"][level]
        lines.append(
            f"| {level} | **{fmt(mem['jobs_per_s_median'])}** | "
            f"**{fmt(red['jobs_per_s_median'])}** | {fmt(life['redis_vs_memory'][level], 3)} | "
            f"{fmt_ms(mem['job_ms_median'])} | {fmt_ms(red['job_ms_median'])} | "
            f"{', '.join(fmt(x) for x in mem['jobs_per_s_rounds'])}; "
            f"{', '.join(fmt(x) for x in red['jobs_per_s_rounds'])} |"
        )
    lines += [
        "",
        "### Event latency: a runner's `update` to a subscriber's `events` iterator",
        "",
        f"One job with N subscribers iterating `store.events(id)`; the writer publishes "
        f"{cfg['events']} progress events per round and store with `update(...)`, each once "
        f"every subscriber has the last one, then {fmt(cfg['gap_s'] * 1000)} ms later, so "
        "this is the latency of an idle path, not of a backlog. A sample is the time from "
        "calling `update` to one subscriber's iterator yielding that event (each subscriber, "
        "each event); *last subscriber* is, per event, when the last of the N had it; "
        "*update call* is how long the writer's `update` itself took.",
        "",
        "| subscribers | store | median ms | p95 ms | last subscriber median ms | "
        "last subscriber p95 ms | update call median ms | samples |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    lat = section["latency"]
    for level in (str(s) for s in cfg["subscribers"]):
        for name in STORES:
            e = lat[name][level]
            lines.append(
                f"| {level} | {LABEL[name]} | **{fmt_ms(e['delivery']['median_ms'])}** | "
                f"**{fmt_ms(e['delivery']['p95_ms'])}** | "
                f"{fmt_ms(e['last_subscriber']['median_ms'])} | "
                f"{fmt_ms(e['last_subscriber']['p95_ms'])} | "
                f"{fmt_ms(e['update_call']['median_ms'])} | {fmt(e['delivery']['n'])} |"
            )
        r = lat["redis_vs_memory"][level]

        def vs(part: str, stat: str, level: str = level) -> str:
            return fmt_ratio(
                ratio(lat["redis"][level][part][stat], lat["memory"][level][part][stat])
            )

        lines.append(
            f"| {level} | Redis / memory | {fmt_ratio(r['median_ms'])} | "
            f"{fmt_ratio(r['p95_ms'])} | {vs('last_subscriber', 'median_ms')} | "
            f"{vs('last_subscriber', 'p95_ms')} | {vs('update_call', 'median_ms')} | |"
        )
    cores = section.get("redis_server_cores", {})
    lines += [
        "",
        "redis-server's CPU (cores, averaged over the Redis turns of each configuration): "
        + ", ".join(f"{key} {fmt(value, 2)}" for key, value in cores.items())
        + ".",
    ]
    return lines


def render_http(section: Record) -> list[str]:
    cfg = section["config"]
    env = section["gateway_env"]
    server = section["redis_server"]
    lines = [
        "Two gateways (`python -m central`, all-in-one: every stage in the gateway process), "
        "started as `sdserve up` starts them with "
        + ", ".join(f"`{k}={v}`" for k, v in env.items())
        + f": one with the memory store, one with a local redis-server "
        f"{server['version']} ({server['settings']}). Both are alive at "
        "once and measured in turns from this process (an httpx client on the same CPUs); "
        f"ready after {section['startup_ready_s']} s. Before measuring, each ran one job and "
        "one burst (the first jobs trace the models' graphs). Per round and gateway: "
        f"{cfg['sequential']} jobs one at a time, then a burst of {cfg['burst']} jobs posted "
        f"at once; {cfg['rounds']} rounds. Every job: `POST /v1/jobs` ({cfg['size']}, "
        f"{cfg['steps']} steps, n=1), then its `events_url` followed (SSE) to the last event. "
        "*POST* is the time to the 202; *first progress* and *done* are from sending the POST "
        "to that event arriving on the stream. Burst jobs/s = jobs / (first POST sent .. last "
        "done received), median over the rounds; its latencies are over every job of every "
        "burst. A step's own moment is not visible from outside the gateway, so the "
        "step-to-subscriber latency is the store section's; here the store's share is in the "
        "POST (the job's `create`) and in the time to the first progress event.",
        "",
        "| store | burst jobs/s | per round | burst POST ms | burst first progress ms | "
        "burst done ms | one at a time: POST ms | first progress ms | first progress p95 ms "
        "| done ms | outcomes |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in STORES:
        e = section[name]
        b, s = e["burst"], e["sequential"]
        outcomes = {
            k: b["outcomes"].get(k, 0) + s["outcomes"].get(k, 0)
            for k in {*b["outcomes"], *s["outcomes"]}
        }
        lines.append(
            f"| {LABEL[name]} | **{fmt(b['jobs_per_s_median'], 2)}** | "
            f"{', '.join(fmt(x, 2) for x in b['jobs_per_s_rounds'])} | "
            f"{fmt_ms(b['post'].get('median_ms'))} | "
            f"{fmt_ms(b['first_progress'].get('median_ms'))} | "
            f"{fmt_ms(b['done'].get('median_ms'))} | {fmt_ms(s['post'].get('median_ms'))} | "
            f"**{fmt_ms(s['first_progress'].get('median_ms'))}** | "
            f"{fmt_ms(s['first_progress'].get('p95_ms'))} | "
            f"{fmt_ms(s['done'].get('median_ms'))} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            + " |"
        )
    r = section["redis_vs_memory"]
    seq_p95 = ratio(
        section["redis"]["sequential"]["first_progress"].get("p95_ms"),
        section["memory"]["sequential"]["first_progress"].get("p95_ms"),
    )
    lines += [
        f"| Redis / memory | {fmt_ratio(r['burst_jobs_per_s'])} | | "
        f"{fmt_ratio(r['burst_post_median'])} | {fmt_ratio(r['burst_first_progress_median'])} | "
        f"{fmt_ratio(r['burst_done_median'])} | {fmt_ratio(r['sequential_post_median'])} | "
        f"{fmt_ratio(r['sequential_first_progress_median'])} | {fmt_ratio(seq_p95)} | "
        f"{fmt_ratio(r['sequential_done_median'])} | |",
        "",
        "CPU cores used per process during the bursts (median over rounds; the other "
        "gateway idles): "
        + "; ".join(
            f"{LABEL[name]} bursts: "
            + ", ".join(
                f"{who} {fmt(v, 2)}" for who, v in section[name]["burst"]["cores_median"].items()
            )
            for name in STORES
        )
        + ".",
    ]
    return lines


def render_markdown(report: Record) -> str:
    sections = report["sections"]
    machine = report["machine"]
    lines = [
        "# Jobs: the memory and Redis job stores",
        "",
        f"Measured by `python -m benchmarks.jobs` ({report['mode']} mode), last run "
        f"{report['finished_utc']}. What `SDSERVE_JOB_STORE` costs: the same work with jobs "
        "kept in the gateway's memory (`memory`, the default) and in a Redis server (a "
        "`redis://` URL, which every gateway replica shares): jobs per second, and how long "
        "a job's progress event takes from the runner to a subscriber. All wall clock; "
        "numbers to compare are measured in one run, the two stores in alternating turns; "
        "each section states its load average.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']} ({machine['logical_cpus']} logical CPUs, "
        f"{machine['usable_cpus']} usable), memory {machine['memory_gib']} GiB. The machine is "
        "shared with other work: load average at start "
        f"{machine['load_average_at_start']}, at end {report.get('load_average_at_end')} "
        "(1, 5, 15 min), so other processes competed for the CPUs; the benchmark process, "
        "redis-server and the gateways all run on them too.",
        f"- Python {machine['python']}, redis-server {machine['redis_server']} (local, "
        f"127.0.0.1), redis-py {machine['redis_py']}, httpx {machine['httpx']}, uvicorn "
        f"{machine['uvicorn']}, sse-starlette {machine['sse_starlette']}; {machine['os']}",
        f"- Total run time of the last invocation: {report.get('total_seconds')} s (sections "
        f"run: {', '.join(report.get('sections_run', []))})",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    lines += notes_block("Reading", "the reading", lambda: reading(sections))
    headers = {"store": "1. The stores, in process", "http": "2. End to end over HTTP"}
    renderers = {"store": render_store, "http": render_http}
    for name, header in headers.items():
        if name in sections:
            lines += section_block(header, sections[name], renderers[name])
    return "\n".join(lines)
