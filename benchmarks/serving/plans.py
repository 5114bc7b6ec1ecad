"""What each mode (full, quick) measures, and the targets of the "Throughput" issue."""

from __future__ import annotations

from benchmarks.harness import Record

# What each mode measures. Sizes are (width, height).
PLANS: dict[str, Record] = {
    "full": {
        "topologies": {
            "tiny": {"size": (64, 64), "n": 4, "steps": 5, "warmup": 2, "repeats": 10},
            # A batch of 4, as the seed system's timing test sent.
            "sd-v1": {"size": (128, 128), "n": 4, "steps": 3, "warmup": 1, "repeats": 4},
        },
        "keras_cv": {"size": (128, 128), "steps": 3, "repeats": 4, "xla_repeats": 2},
        "concurrency": {
            "tiny": {
                "size": (64, 64),
                "steps": 25,
                "clients": [1, 2, 4, 8, 16],
                "warmup_s": 3.0,
                "window_s": 15.0,
                "window_factor": 1.5,
            },
            "sd-v1": {
                "size": (128, 128),
                "steps": 3,
                "clients": [1, 4, 8],
                "warmup_s": 8.0,
                "window_s": 30.0,
                "window_factor": 0.75,
            },
        },
        "overload": {
            "size": (64, 64),
            "steps": 25,
            "queue_size": 4,
            "moderate_clients": 4,
            "moderate_s": 20.0,
            "overload_clients": 64,
            "overload_s": 30.0,
            "max_requests": 4000,
            "pause_after_503_s": 0.05,
        },
        "wire": {"shapes": {"tiny": (64, 64), "sd-v1": (512, 512)}, "n": [1, 4]},
        "locust": {"users": 8, "spawn_rate": 4, "seconds": 20, "size": (64, 64), "steps": 25},
        "replicas": {"size": (64, 64), "steps": 10, "clients": 4, "requests": 60},
    },
    "quick": {
        "topologies": {
            "tiny": {"size": (64, 64), "n": 4, "steps": 5, "warmup": 1, "repeats": 3},
            "sd-v1": {"size": (128, 128), "n": 1, "steps": 3, "warmup": 1, "repeats": 2},
        },
        "keras_cv": {"size": (128, 128), "steps": 3, "repeats": 2, "xla_repeats": 1},
        "concurrency": {
            "tiny": {
                "size": (64, 64),
                "steps": 25,
                "clients": [1, 8],
                "warmup_s": 2.0,
                "window_s": 6.0,
                "window_factor": 1.0,
            },
            "sd-v1": {
                "size": (128, 128),
                "steps": 3,
                "clients": [1, 4],
                "warmup_s": 5.0,
                "window_s": 20.0,
                "window_factor": 1.0,
            },
        },
        "overload": {
            "size": (64, 64),
            "steps": 25,
            "queue_size": 4,
            "moderate_clients": 4,
            "moderate_s": 8.0,
            "overload_clients": 64,
            "overload_s": 10.0,
            "max_requests": 1500,
            "pause_after_503_s": 0.05,
        },
        "wire": {"shapes": {"tiny": (64, 64), "sd-v1": (512, 512)}, "n": [1, 4]},
        "locust": {"users": 8, "spawn_rate": 4, "seconds": 10, "size": (64, 64), "steps": 25},
        "replicas": {"size": (64, 64), "steps": 10, "clients": 4, "requests": 24},
    },
}

# Targets of the "Throughput" issue, checked against the numbers in the report.
TARGETS = {
    "topology_ratio_max": 1.05,  # sd-v1 128x128: three-endpoints / all-in-one median
    "vs_keras_cv_default_max": 0.5,  # ours / keras-cv jit_compile=True, steady state
    "vs_keras_cv_best_max": 1.0,  # ours / keras-cv's faster setting
    "cb_throughput_min": 2.0,  # tiny 64x64 at 8 clients, CB / no-CB
    "cb_lone_latency_max": 1.1,  # tiny 64x64 at 1 client, CB p50 / no-CB p50
    "rss_growth_max": 1.10,  # overload RSS / moderate-load RSS, each process
}
