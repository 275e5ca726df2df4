"""The development harness: the main job's demo, a headless ComfyUI runner and the UI → API workflow converter.

Lives in the repository, not in the installed package (pyproject `packages` leaves it out, so a built wheel has
no `comfyui_salt.dev`): in a checkout, the editable install (and ComfyUI's folder import) resolve it as
`comfyui_salt.dev` like every folder of the pack root. Used by the tests (`tests/test_comfy_server.py`,
`tests/test_browser.py`, `tests/test_demo.py`, ...) and by the CLI's `demo` command, which says so when it is
absent. Nothing in salt_core, training (beyond that command), toy or nodes imports it.

- `comfy_runner`: boot a ComfyUI subprocess (`.venv/comfyui` by default, or SALT_COMFYUI_DIR) with this pack
  linked in, queue UI-format workflows over HTTP, collect their files, stop it;
- `workflow_api`: convert a UI-format workflow to the API prompt the server executes;
- `demo`: the main job (`python -m comfyui_salt demo`).
"""
