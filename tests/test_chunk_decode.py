"""Chunk-wise decoding of a stream's Wan latents with the graph's own VAE (nodes.bridge.decoders.WanChunkDecoder)
against ComfyUI's whole-latent VAEDecode, on a tiny random Wan 2.1 VAE built from ComfyUI's own class
(tests/test_comfy_server.tiny_wan_vae_state_dict), on whichever ComfyUI line the tests import (0.3.75 or 0.33)."""
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
    from comfyui_salt.nodes.bridge.decoders import WanChunkDecoder
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
    from comfyui_salt.nodes.bridge.decoders import WanChunkDecoder
    other = type("VAE", (), {"first_stage_model": torch.nn.Identity()})()
    with pytest.raises(TypeError, match="live decoding needs the Wan 2.1 VAE"):
        WanChunkDecoder(other)


@pytest.fixture(scope="module")
def tiny_taehv(salt_nodes):
    import comfy.sd
    from helpers import tiny_taehv_state_dict
    vae = comfy.sd.VAE(sd=tiny_taehv_state_dict())
    assert type(vae.first_stage_model).__name__ == "TAEHV"
    return vae


@pytest.mark.parametrize("chunks", [(3, 3, 1), (1, 1, 1, 1), (4,)], ids=lambda c: "-".join(map(str, c)))
def test_a_tiny_decoder_chunk_by_chunk_equals_its_whole_latent_vae_decode(tiny_taehv, chunks):
    """A random Wan 2.1 TAEHV (lighttaew2_1's class and detection in ComfyUI) decoding a stream chunk by chunk, its
    memory blocks carried across chunks, equals VAEDecode of the whole latent with the same VAE."""
    import nodes as comfy_nodes
    from comfyui_salt.nodes.bridge.decoders import TinyChunkDecoder
    latent = torch.randn(1, 16, sum(chunks), 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = comfy_nodes.VAEDecode().decode(tiny_taehv, {"samples": latent})[0]
        decoder, frames, start = TinyChunkDecoder(tiny_taehv), [], 0
        for n in chunks:
            frames.append(decoder.push(latent[:, :, start:start + n]))
            start += n
        alone = TinyChunkDecoder(tiny_taehv).push(latent[:, :, sum(chunks) - 1:])     # no memory of the past
    ours = torch.cat(frames)
    assert whole.shape == (1 + 4 * (sum(chunks) - 1), 32, 48, 3) and ours.shape == whole.shape
    assert_close(ours, whole, CHUNK_DECODE_RTOL, f"chunks {chunks}")
    if sum(chunks) > 1:                                    # the carried memory matters
        assert (alone - whole[-1:]).abs().max() > 1e-3


def test_the_tiny_decoder_is_found_in_vae_approx_by_comfys_names_and_others_are_refused(salt_nodes, tiny_taehv,
                                                                                          tmp_path, monkeypatch):
    import folder_paths
    from safetensors.torch import save_file
    from comfyui_salt.nodes.bridge import decoders as bridge
    from helpers import tiny_taehv_state_dict
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "vae_approx",
                        ([str(tmp_path)], folder_paths.supported_pt_extensions))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    save_file(tiny_taehv_state_dict(), str(tmp_path / "lighttaew2_1.safetensors"))
    (tmp_path / "taesd_decoder.safetensors").write_bytes(b"not this one")
    assert bridge.tiny_wan_decoder_files() == ["lighttaew2_1.safetensors"]
    decoder = bridge.load_tiny_wan_decoder("lighttaew2_1.safetensors")
    assert type(decoder.model).__name__ == "TAEHV"
    for bad in ("taesd_decoder.safetensors", "../lighttaew2_1.safetensors", "/etc/passwd", None):
        with pytest.raises(ValueError, match="not a Wan 2.1 tiny decoder"):
            bridge.load_tiny_wan_decoder(bad)
    with pytest.raises(TypeError, match="Wan 2.1 tiny decoder"):
        bridge.TinyChunkDecoder(type("VAE", (), {"first_stage_model": torch.nn.Identity()})())
