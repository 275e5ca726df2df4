"""Convert a ComfyUI UI-format workflow (what the frontend saves) to the API format the server executes.

UI format: {"nodes": [{id, type, mode, inputs: [{name, type, link, widget?}], outputs, widgets_values}],
"links": [[id, origin_id, origin_slot, target_id, target_slot, type], ...] (or link objects)}.
API format: {"<id>": {"class_type": type, "inputs": {name: value | ["<origin id>", slot]}}}.

Widget values are matched to input names in `/object_info` input order (required, then optional),
skipping the extra `control_after_generate` value ("fixed", "randomize", ...) after seed-like widgets.
A widget converted to an input and linked takes the link. Frontend-only nodes are resolved:
PrimitiveNode (its value is inlined), Reroute (followed), Note / MarkdownNote (dropped). Muted nodes
(mode 2) are dropped with the links they feed; bypassed nodes (mode 4) pass a matching input through.
Not handled: subgraphs, group nodes, upload-button widget values (LoadImage).

Pure JSON: knows nothing of ComfyUI's modules or of a running server (the caller passes `/object_info`).
"""
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
SEED_NAMES = ("seed", "noise_seed")          # the frontend adds control_after_generate to these by name
DROPPED_TYPES = ("Note", "MarkdownNote")
MODE_MUTED, MODE_BYPASSED = 2, 4


class ConvertError(ValueError):
    """A workflow that cannot be converted (unknown node type, missing widget value, broken link)."""


def parse_links(links: list) -> dict:
    """{link id: (origin id, origin slot, target id, target slot, type)} from array or object links."""
    out = {}
    for link in links or []:
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        out[link[0]] = tuple(link[1:6])
    return out


def is_widget(spec) -> bool:
    """True for an /object_info input spec that the frontend shows as a widget (not a socket)."""
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ordered_inputs(info: dict) -> list:
    """[(name, spec)] of a node's inputs in the frontend's widget order: required, then optional."""
    order = info.get("input_order") or {}
    out = []
    for group in ("required", "optional"):
        specs = info.get("input", {}).get(group) or {}
        for name in order.get(group) or list(specs):
            out.append((name, specs[name]))
    return out


def has_control_widget(name: str, spec) -> bool:
    """Whether the frontend adds a control_after_generate widget after this input: as the spec says when it says
    (an explicit False turns the seed-name rule off, as in the frontend), else for INT seeds by name."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("control_after_generate") is not None:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in SEED_NAMES


def widget_values(node: dict, info: dict) -> dict:
    """{input name: value} of a node's widgets, from its widgets_values list (or dict)."""
    values = node.get("widgets_values")
    widgets = [(name, spec) for name, spec in ordered_inputs(info) if is_widget(spec)]
    if isinstance(values, dict):
        return {name: values[name] for name, _ in widgets if name in values}
    values, out, i = list(values or []), {}, 0
    for name, spec in widgets:
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1
        if has_control_widget(name, spec) and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
    return out


class Converter:
    """One workflow's conversion (nodes and links indexed once)."""

    def __init__(self, workflow: dict, object_info: dict):
        self.nodes = {n["id"]: n for n in workflow.get("nodes", [])}
        self.links = parse_links(workflow.get("links"))
        self.info = object_info

    def source(self, link_id, seen=()):
        """What a link delivers: ("link", origin id, slot), ("value", v), or None (muted / unconnected)."""
        if link_id is None:
            return None
        if link_id not in self.links or link_id in seen:
            raise ConvertError(f"link {link_id} is missing from the links list or forms a loop")
        origin_id, slot, _, _, kind = self.links[link_id]
        origin = self.nodes.get(origin_id)
        if origin is None:
            raise ConvertError(f"link {link_id} comes from node {origin_id}, which is not in the workflow")
        seen = seen + (link_id,)
        if origin["type"] == "Reroute":
            return self.source((origin.get("inputs") or [{}])[0].get("link"), seen)
        if origin["type"] == "PrimitiveNode":
            return ("value", (origin.get("widgets_values") or [None])[0])
        mode = origin.get("mode", 0)
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASSED:
            return self.source(self.bypass_input(origin, slot, kind), seen)
        return ("link", str(origin_id), slot)

    @staticmethod
    def bypass_input(node: dict, slot: int, kind) -> object:
        """The link a bypassed node passes on for output `slot`: a connected input of the same type,
        the one at the same index first."""
        inputs = [(i, inp) for i, inp in enumerate(node.get("inputs") or []) if inp.get("link") is not None]
        matches = [(i, inp) for i, inp in inputs if kind is None or inp.get("type") == kind]
        matches.sort(key=lambda pair: pair[0] != slot)
        return matches[0][1]["link"] if matches else None

    def convert_node(self, node: dict) -> dict:
        """{"class_type", "inputs", "_meta"} of one executable node."""
        kind = node["type"]
        info = self.info.get(kind)
        if info is None:
            raise ConvertError(f"node {node['id']} has type {kind!r}, which the server does not know (a missing "
                               f"custom node pack, or a subgraph / group node, which this converter does not expand)")
        inputs = widget_values(node, info)
        for entry in node.get("inputs") or []:
            name = (entry.get("widget") or {}).get("name", entry["name"])
            if entry.get("link") is None:
                continue
            src = self.source(entry["link"])
            if src is None:
                inputs.pop(name, None)
            else:
                inputs[name] = src[1] if src[0] == "value" else [src[1], src[2]]
        for name, spec in ordered_inputs(info):
            if name in inputs or name not in (info["input"].get("required") or {}) or not is_widget(spec):
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" not in opts:
                raise ConvertError(f"node {node['id']} ({kind}) has no value for widget {name!r} and the server "
                                   f"gives it no default; the workflow was saved by another version of the node")
            inputs[name] = opts["default"]
        return {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or info.get(
            "display_name") or kind}}

    def convert(self) -> dict:
        api = {}
        for node_id, node in self.nodes.items():
            if node["type"] in DROPPED_TYPES + ("Reroute", "PrimitiveNode"):
                continue
            if node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
                continue
            api[str(node_id)] = self.convert_node(node)
        return api


def convert(workflow: dict, object_info: dict) -> dict:
    """API-format prompt {"<id>": {"class_type", "inputs", "_meta"}} of a UI-format workflow."""
    return Converter(workflow, object_info).convert()
