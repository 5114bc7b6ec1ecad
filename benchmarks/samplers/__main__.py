"""Quality per step: each sampler's held-out accuracy on tiny at 5, 10, 15 and 25 steps.

Writes samplers.md, samplers.json and samplers.png into --out-dir; see
benchmarks/README.md.

    python -m benchmarks.samplers                        # every held-out prompt (~10 min on 2 CPUs)
    python -m benchmarks.samplers --quick                # 32 prompts: a rough, preliminary look
    python -m benchmarks.samplers --only euler_ancestral # one sampler again, keeping the others
    python -m benchmarks.samplers --render-only          # re-render from samplers.json
    python -m benchmarks.samplers --only card --card-settings ddim:8,ddim:10
                                      # the model card's scores there and at DDIM 25
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys

from benchmarks.harness import (
    Outputs,
    SectionRun,
    load_average,
    log,
    parse_section_args,
    section_parser,
)
from benchmarks.host import cpu_and_memory, package_version
from benchmarks.samplers.measure import section_card, section_sampler, weights_description
from benchmarks.samplers.report import CARD_SECTION, derive, render_markdown, write_chart
from shared.families import get_family
from shared.sampler_names import SAMPLER_NAMES, SamplerName, canonical_sampler
from training.scenes import held_out_count

DEFAULT_STEPS = (5, 10, 15, 25)
QUICK_PROMPTS = 32
SECTIONS = (*SAMPLER_NAMES, CARD_SECTION)


def _steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of step counts") from None
    if not steps or steps[0] < 1:
        raise argparse.ArgumentTypeError("step counts must be at least 1")
    return steps


def _card_settings(text: str) -> list[tuple[SamplerName, int]]:
    settings = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        sampler, _, steps = item.partition(":")
        try:
            settings.append((canonical_sampler(sampler), int(steps)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not SAMPLER:STEPS (e.g. ddim:10)"
            ) from None
    if not settings or min(steps for _, steps in settings) < 1:
        raise argparse.ArgumentTypeError("give at least one SAMPLER:STEPS, steps at least 1")
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = section_parser(
        "samplers",
        __doc__,
        SECTIONS,
        quick_help=f"{QUICK_PROMPTS} prompts instead of every held-out one (preliminary)",
        render_help="re-render samplers.md and samplers.png from samplers.json, measuring nothing",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=None,
        help=f"held-out prompts per configuration (default: all {held_out_count()}; "
        f"--quick: {QUICK_PROMPTS})",
    )
    parser.add_argument(
        "--steps",
        type=_steps,
        default=list(DEFAULT_STEPS),
        help="comma list of step counts (default: 5,10,15,25; DDIM's 25 is the reference)",
    )
    parser.add_argument("--weights", default="embedded", help="tiny's weights (default: embedded)")
    spec = get_family("tiny").spec
    parser.add_argument(
        "--card-settings",
        type=_card_settings,
        default=[(spec.default_sampler, spec.default_steps)],
        help="the card section: comma list of SAMPLER:STEPS to score beside the card's own "
        f"(ddim:25); default: tiny's served default, {spec.default_sampler}:{spec.default_steps}",
    )
    parser.add_argument(
        "--note", default="", help="a line for the report's head (marks the results preliminary)"
    )
    args = parse_section_args(parser, SECTIONS, argv)
    if args.prompts is None:
        args.prompts = QUICK_PROMPTS if args.quick else held_out_count()
    if not 1 <= args.prompts <= held_out_count():
        parser.error(f"--prompts must be between 1 and {held_out_count()}")
    return args


def machine_description() -> dict[str, object]:
    return {
        **cpu_and_memory(),
        "load_average_at_start": load_average(),
        "python": platform.python_version(),
        "tensorflow": package_version("tensorflow", "tensorflow-cpu"),
        "keras": package_version("keras"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def render(report: dict[str, object]) -> str:
        return render_markdown(report)

    outputs = Outputs.at("samplers", args.out_dir, render)
    if args.render_only:
        report = outputs.load()
        outputs.write_markdown(report)
        write_chart(report, outputs.out_dir)
        log(f"re-rendered {outputs.md_path} and the chart from samplers.json")
        return 0
    plan = {
        "prompts": args.prompts,
        "steps": args.steps,
        "sections": args.sections,
        "card_settings": [f"{sampler}:{steps}" for sampler, steps in args.card_settings],
    }
    run = SectionRun(
        outputs,
        args,
        argv,
        machine=machine_description(),
        plan=plan,
        extra={"weights": weights_description(args), "note": args.note},
        derive=derive,
    )
    log(f"{args.mode} run of {args.sections}: {args.prompts} prompts at {args.steps} steps")
    run.run(
        {
            name: functools.partial(section_card, args)
            if name == CARD_SECTION
            else functools.partial(section_sampler, name, args)
            for name in args.sections
        }
    )
    run.save()
    write_chart(run.report, outputs.out_dir)
    log(
        f"done in {run.report['total_seconds']} s; wrote {outputs.out_dir}/samplers.md, .json, .png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
