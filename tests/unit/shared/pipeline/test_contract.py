"""Stage contracts as data: tensor fields travel as npz members, routes are picked by the
tensors a request carries, and every declared tensor has a spec for each family."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import InvalidInput
from shared.families import FAMILY_NAMES, get_family
from shared.pipeline.contract import from_arrays, tensor_fields, to_arrays, validated
from shared.pipeline.stage_contracts import CONTRACTS, DENOISE
from shared.pipeline.types import DenoiseParams, DenoiseRequest, EncodedPrompts
from shared.wire import decode_npz, encode_npz

PARAMS = DenoiseParams(width=64, height=64, steps=2, guidance_scale=5.0, n=2)


def _contexts() -> tuple[np.ndarray, np.ndarray]:
    context = np.ones((1, 77, 128), np.float32)
    return context, np.zeros_like(context)


def test_lists_travel_as_arrays_and_come_back_as_lists() -> None:
    context, unconditional = _contexts()
    encoded = EncodedPrompts(context, unconditional, token_counts=[3], truncated=[False])
    arrays = to_arrays(encoded)
    assert set(arrays) == {"context", "unconditional_context", "token_count", "truncated"}
    assert arrays["token_count"].dtype == np.int32 and arrays["truncated"].dtype == bool
    back = from_arrays(EncodedPrompts, arrays)
    assert back.token_counts == [3] and back.truncated == [False]
    assert isinstance(back.token_counts[0], int)


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({}, "/v1/denoise"),
        ({"init_latent": np.zeros((1, 16, 16, 4), np.float32)}, "/v1/img2img"),
        (
            {
                "init_latent": np.zeros((1, 16, 16, 4), np.float32),
                "mask": np.ones((1, 16, 16, 1), np.float32),
            },
            "/v1/inpaint",
        ),
    ],
)
def test_the_tensors_a_request_carries_pick_its_route(extra: dict, path: str) -> None:
    context, unconditional = _contexts()
    request = DenoiseRequest(context, unconditional, PARAMS, **extra)
    route = DENOISE.route_for(request)
    assert route.path == path
    # What the route's specs accept is exactly what the request sends.
    family = get_family("tiny").spec
    body = encode_npz(to_arrays(request))
    decoded = decode_npz(body, DENOISE.request_specs(route, family), max_bytes=1 << 24)
    again = from_arrays(DenoiseRequest, decoded, params=PARAMS)
    assert sorted(k for k in tensor_fields(DenoiseRequest) if getattr(again, k) is not None) == (
        sorted(route.members)
    )


def test_a_mask_without_an_init_latent_has_no_route() -> None:
    context, unconditional = _contexts()
    request = DenoiseRequest(
        context, unconditional, PARAMS, mask=np.ones((1, 16, 16, 1), np.float32)
    )
    with pytest.raises(InvalidInput):
        DENOISE.route_for(request)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_declared_tensor_has_a_spec_for_every_family(family: str) -> None:
    spec = get_family(family).spec
    for contract in CONTRACTS.values():
        for op in contract.operations:
            assert op.result_specs(spec)
            for route in op.routes:
                specs = op.request_specs(route, spec)
                assert set(specs) == set(route.members)
                assert all(d is None or d > 0 for s in specs.values() for d in s.shape)


def test_parameters_out_of_range_name_the_field() -> None:
    with pytest.raises(InvalidInput) as refused:
        validated(DenoiseParams, {"width": 64, "height": 64, "steps": 0, "guidance_scale": 1})
    assert refused.value.param == "steps"
    with pytest.raises(InvalidInput) as refused:
        validated(DenoiseParams, {"width": 64, "height": 64, "steps": 1}, prefix="parameters.")
    assert refused.value.param == "parameters.guidance_scale"
