"""SpatialAwarePromptEncoder with views: the canvas drawn on the whole input, cut into the image's
views (global view max-pooled, then the tiles row-major), each view encoded on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import block_reduce
from test_spatial import M, P, S, batch, make_encoder

from rsvlm.contracts import ContractError
from rsvlm.fusion.views import ViewTiler
from rsvlm.prompts.geometry import rasterize
from rsvlm.prompts.sparse import pad_slots


def test_views_encode_the_global_view_and_the_tiles_of_one_canvas():
    views = ViewTiler("1+2x2", view_size=S)
    sae = make_encoder(views=views)
    one_view = make_encoder()  # the same seed: the same ViT weights
    size = 2 * S
    prompts = batch([[("point", (40.5, 10.5)), ("box", (3.0, 30.0, 20.0, 50.0)), None, None]], size=size)
    with torch.no_grad():
        tokens = sae(prompts)
    assert tokens.shape == (1, 5 * (S // P) ** 2, 8) and sae.num_tokens == 5 * (S // P) ** 2
    # Reference: draw on the whole 2S canvas, the global view by 2×2 max blocks (skimage), the tiles by slicing.
    canvas = rasterize(pad_slots(prompts, M), (size, size), sae.point_radius, sae.line_width, sae.box_style)
    whole = canvas.numpy()
    parts = [block_reduce(whole, (1, 1, 2, 2), np.max)]
    parts += [whole[..., i * S : (i + 1) * S, j * S : (j + 1) * S] for i in range(2) for j in range(2)]
    with torch.no_grad():
        expected = torch.cat([one_view.encode_canvas(torch.from_numpy(np.ascontiguousarray(p))) for p in parts], dim=1)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    assert parts[0][0, :M].sum(axis=(1, 2)).astype(bool).tolist() == [True, True, False, False]  # both survive


def test_views_must_be_the_image_encoders():
    with pytest.raises(ContractError, match="view_size=16"):
        make_encoder(views=ViewTiler("1+2x2", view_size=16))
