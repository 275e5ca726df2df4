"""Chunk-wise decoding of a stream's Wan latents with the graph's own VAE (nodes.bridge.WanChunkDecoder) against
ComfyUI's whole-latent VAEDecode, on a tiny random Wan 2.1 VAE built from ComfyUI's own class (tests/
test_comfy_server.tiny_wan_vae_state_dict), on whichever ComfyUI line the tests import (0.3.75 or 0.33)."""
import pytest
import torch

from helpers import assert_close

# fp32: the same convolutions on the same frames with the same carried cache; measured 0 on both lines
CHUNK_DECODE_RTOL = 1e-5


@pytest.fixture(scope="module")
def tiny_vae(salt_nodes):
    import comfy.sd
    from helpers import tiny_wan_vae_state_dict
    vae = comfy.sd.VAE(sd=tiny_wan_vae_state_dict())
    assert type(vae.first_stage_model).__name__ == "WanVAE"
    return vae


@pytest.mark.parametrize("chunks", [(3, 3, 1), (1, 3, 3), (2, 2, 3), (7,), (1,) * 7], ids=lambda c: "-".join(map(str, c)))
def test_chunk_wise_frames_equal_a_whole_latent_vae_decode(tiny_vae, chunks):
    import nodes as comfy_nodes
    from comfyui_salt.nodes.bridge import WanChunkDecoder
    latent = torch.randn(1, 16, sum(chunks), 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = comfy_nodes.VAEDecode().decode(tiny_vae, {"samples": latent})[0]
        decoder, frames, start = WanChunkDecoder(tiny_vae), [], 0
        for n in chunks:
            frames.append(decoder.push(latent[:, :, start:start + n]))
            start += n
        frames.append(decoder.push(latent[:, :, :0]))   # nothing new: flushes nothing, returns no frame
    ours = torch.cat(frames)
    assert whole.shape == (1 + 4 * (sum(chunks) - 1), 32, 48, 3) and ours.shape[1:] == whole.shape[1:]
    done = ours.shape[0]                                   # a frame left inside an unfinished pair is not shown yet
    assert done >= whole.shape[0] - 4
    assert_close(ours, whole[:done], CHUNK_DECODE_RTOL, f"chunks {chunks}")


def test_chunk_decoding_refuses_a_vae_that_is_not_wan_21(salt_nodes, tiny_vae):
    from comfyui_salt.nodes.bridge import WanChunkDecoder
    other = type("VAE", (), {"first_stage_model": torch.nn.Identity()})()
    with pytest.raises(TypeError, match="live decoding needs the Wan 2.1 VAE"):
        WanChunkDecoder(other)
