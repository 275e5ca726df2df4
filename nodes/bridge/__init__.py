"""The pack's one door to ComfyUI: the V3 node API (re-exported here) and the few internals the nodes use, in one
module per concern: `paths` (folders and client-sent names), `memory` (model management, devices, native MODELs),
`progress` (Cancel, progress bar, previews), `convert` (LATENT, IMAGE, CLIP, SAMPLER), `decoders` (chunk-wise Wan
decoding) and `server` (websocket events, HTTP routes). Nothing else in `nodes/` imports ComfyUI, so a change of
ComfyUI internals is fixed here. Knows nothing of Salt models beyond tensors and modules.
"""
from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401  (re-exported: nodes import them from here)
