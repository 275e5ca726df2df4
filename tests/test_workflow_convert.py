"""The UI → API workflow converter on small hand-written graphs, and the shipped workflows' consistency.

The /object_info entries below are written in the server's format (V1 list combos and V3
("COMBO", {"options"}) combos both occur in 0.3.75). Executing the shipped workflows against a real
server is in test_comfy_server.py.
"""
import json
import pathlib

import pytest

from comfyui_salt.dev.workflow_api import ConvertError, convert, parse_links

WORKFLOWS = sorted((pathlib.Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))

OBJECT_INFO = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL"]},
    "Encode": {"input": {"required": {"text": ["STRING", {"multiline": True}]}},
               "input_order": {"required": ["text"]}, "output": ["CONDITIONING"]},
    "Sampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0, "min": 0}],
                                       "steps": ["INT", {"default": 20, "min": 1}],
                                       "mode": ["COMBO", {"options": ["fixed_a", "b"]}],
                                       "positive": ["CONDITIONING", {}]},
                          "optional": {"cfg": ["FLOAT", {"default": 1.0}], "negative": ["CONDITIONING", {}]}},
                "input_order": {"required": ["model", "seed", "steps", "mode", "positive"],
                                "optional": ["cfg", "negative"]},
                "output": ["LATENT"]},
    "V3Seeded": {"input": {"required": {"noise": ["INT", {"default": 0, "control_after_generate": True}],
                                        "count": ["INT", {"default": 1, "forceInput": True}],
                                        "label": ["STRING", {}]}},
                 "input_order": {"required": ["noise", "count", "label"]}, "output": ["NOISE"]},
    "Filter": {"input": {"required": {"model": ["MODEL", {}], "strength": ["FLOAT", {"default": 1.0}]}},
               "input_order": {"required": ["model", "strength"]}, "output": ["MODEL"]},
}


def node(id, type, widgets=None, inputs=(), mode=0, **extra):
    return {"id": id, "type": type, "mode": mode, "inputs": [dict(i) for i in inputs], "outputs": [],
            "widgets_values": widgets if widgets is not None else [], **extra}


def socket(name, type, link, widget=False):
    out = {"name": name, "type": type, "link": link}
    if widget:
        out["widget"] = {"name": name}
    return out


def chain(sampler_widgets, model_link=1, extra_nodes=(), extra_links=(), sampler_inputs=None):
    """Loader(1) → Sampler(3) ← Encode(2), plus extras."""
    inputs = sampler_inputs or [socket("model", "MODEL", model_link), socket("positive", "CONDITIONING", 2)]
    nodes = [node(1, "Loader", ["b.safetensors"]), node(2, "Encode", ["a cat"]),
             node(3, "Sampler", sampler_widgets, inputs), *extra_nodes]
    links = [[1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "CONDITIONING"], *extra_links]
    return {"nodes": nodes, "links": links, "version": 0.4}


def test_widgets_map_to_inputs_in_object_info_order_skipping_the_seed_control_value():
    api = convert(chain([5, "randomize", 4, "b", 2.5]), OBJECT_INFO)
    assert api["3"]["class_type"] == "Sampler"
    assert api["3"]["inputs"] == {"model": ["1", 0], "seed": 5, "steps": 4, "mode": "b", "cfg": 2.5,
                                  "positive": ["2", 0]}
    assert api["1"]["inputs"] == {"ckpt_name": "b.safetensors"} and api["2"]["inputs"] == {"text": "a cat"}


def test_a_seed_saved_without_a_control_value_does_not_swallow_the_next_widget():
    assert convert(chain([5, 4, "b", 2.5]), OBJECT_INFO)["3"]["inputs"]["steps"] == 4


def test_a_v3_control_after_generate_flag_counts_for_any_name_and_force_input_ints_are_sockets():
    wf = {"nodes": [node(1, "V3Seeded", [9, "increment", "hello"], [socket("count", "INT", None)])], "links": []}
    assert convert(wf, OBJECT_INFO)["1"]["inputs"] == {"noise": 9, "label": "hello"}


def test_an_explicit_false_control_flag_turns_the_seed_name_rule_off():
    info = {"Trainer": {"input": {"required": {"seed": ["INT", {"default": 0, "control_after_generate": False}],
                                               "name": ["STRING", {}]}},
                        "input_order": {"required": ["seed", "name"]}, "output": ["STRING"]}}
    wf = {"nodes": [node(1, "Trainer", [3, "fixed"])], "links": []}
    assert convert(wf, info)["1"]["inputs"] == {"seed": 3, "name": "fixed"}


def test_a_converted_widget_fed_by_a_primitive_node_gets_the_primitive_value():
    prim = node(4, "PrimitiveNode", [123, "fixed"])
    inputs = [socket("model", "MODEL", 1), socket("positive", "CONDITIONING", 2), socket("seed", "INT", 3, widget=True)]
    wf = chain([5, "fixed", 4, "b", 2.5], extra_nodes=[prim], extra_links=[[3, 4, 0, 3, 2, "INT"]],
               sampler_inputs=inputs)
    api = convert(wf, OBJECT_INFO)
    assert api["3"]["inputs"]["seed"] == 123 and "4" not in api


def test_a_converted_widget_fed_by_a_node_gets_the_link():
    seeded = node(4, "V3Seeded", [1, "fixed", "x"])
    inputs = [socket("model", "MODEL", 1), socket("positive", "CONDITIONING", 2), socket("steps", "INT", 3, True)]
    wf = chain([5, "fixed", 4, "b", 2.5], extra_nodes=[seeded], extra_links=[[3, 4, 0, 3, 2, "INT"]],
               sampler_inputs=inputs)
    assert convert(wf, OBJECT_INFO)["3"]["inputs"]["steps"] == ["4", 0]


def test_reroutes_are_followed_and_dropped():
    reroutes = [node(5, "Reroute", inputs=[socket("", "*", 1)]), node(6, "Reroute", inputs=[socket("", "*", 7)])]
    links = [[7, 5, 0, 6, 0, "MODEL"], [8, 6, 0, 3, 0, "MODEL"]]
    wf = chain([5, "fixed", 4, "b"], model_link=8, extra_nodes=reroutes, extra_links=links)
    wf["links"][0] = [1, 1, 0, 5, 0, "MODEL"]
    api = convert(wf, OBJECT_INFO)
    assert api["3"]["inputs"]["model"] == ["1", 0] and set(api) == {"1", "2", "3"}


def test_a_bypassed_node_passes_its_input_of_the_same_type_through():
    filt = node(4, "Filter", [0.5], [socket("model", "MODEL", 1)], mode=4)
    wf = chain([5, "fixed", 4, "b"], model_link=9, extra_nodes=[filt], extra_links=[[9, 4, 0, 3, 0, "MODEL"]])
    wf["links"][0] = [1, 1, 0, 4, 0, "MODEL"]
    api = convert(wf, OBJECT_INFO)
    assert "4" not in api and api["3"]["inputs"]["model"] == ["1", 0]


def test_a_muted_node_is_dropped_with_the_inputs_it_feeds():
    wf = chain([5, "fixed", 4, "b"])
    wf["nodes"][1]["mode"] = 2
    api = convert(wf, OBJECT_INFO)
    assert "2" not in api and "positive" not in api["3"]["inputs"]


def test_widgets_missing_from_an_older_save_take_the_server_default_or_stay_absent_if_optional():
    assert "cfg" not in convert(chain([5, "fixed", 4, "b"]), OBJECT_INFO)["3"]["inputs"]
    wf = {"nodes": [node(1, "Loader", ["a.safetensors"]), node(2, "Filter", [], [socket("model", "MODEL", 1)])],
          "links": [[1, 1, 0, 2, 0, "MODEL"]]}
    assert convert(wf, OBJECT_INFO)["2"]["inputs"] == {"model": ["1", 0], "strength": 1.0}


def test_a_required_widget_without_value_or_default_is_an_error_naming_it():
    wf = {"nodes": [node(1, "Encode", [])], "links": []}
    with pytest.raises(ConvertError, match="node 1 \\(Encode\\) has no value for widget 'text'"):
        convert(wf, OBJECT_INFO)


def test_dict_widget_values_and_link_objects_are_understood():
    wf = chain({"seed": 1, "steps": 2, "mode": "fixed_a"})
    wf["links"] = [{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3], "target_slot": l[4],
                    "type": l[5]} for l in wf["links"]]
    assert parse_links(wf["links"])[1] == (1, 0, 3, 0, "MODEL")
    assert convert(wf, OBJECT_INFO)["3"]["inputs"] == {"model": ["1", 0], "seed": 1, "steps": 2, "mode": "fixed_a",
                                                       "positive": ["2", 0]}


def test_notes_are_dropped_and_unknown_node_types_are_an_error():
    wf = chain([5, "fixed", 4, "b"], extra_nodes=[node(9, "Note", ["hello"]), node(10, "MarkdownNote", ["# hi"])])
    assert set(convert(wf, OBJECT_INFO)) == {"1", "2", "3"}
    wf["nodes"].append(node(11, "SomebodysNode", [1]))
    with pytest.raises(ConvertError, match="'SomebodysNode', which the server does not know"):
        convert(wf, OBJECT_INFO)


def test_a_link_to_a_missing_node_is_an_error():
    wf = chain([5, "fixed", 4, "b"])
    wf["links"][0] = [1, 42, 0, 3, 0, "MODEL"]
    with pytest.raises(ConvertError, match="node 42, which is not in the workflow"):
        convert(wf, OBJECT_INFO)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_shipped_workflows_are_consistent_ui_graphs(path):
    """Every link is listed once, agrees with both end nodes, and ids stay below the recorded maxima."""
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4 and wf["nodes"] and isinstance(wf["links"], list)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and max(nodes) <= wf["last_node_id"]
    links = parse_links(wf["links"])
    assert len(links) == len(wf["links"]) and max(links) <= wf["last_link_id"]
    for link_id, (origin, out_slot, target, in_slot, kind) in links.items():
        output, inp = nodes[origin]["outputs"][out_slot], nodes[target]["inputs"][in_slot]
        assert link_id in output["links"] and inp["link"] == link_id, f"link {link_id}"
        assert output["type"] == kind and inp["type"] in (kind, "*"), f"link {link_id}"   # "*": any type (PreviewAny)
    for n in wf["nodes"]:
        assert {"pos", "size", "mode", "widgets_values", "properties"} <= set(n), n["id"]
        for inp in n["inputs"]:
            assert inp["link"] is None or inp["link"] in links, f"node {n['id']} input {inp['name']}"
        for out in n["outputs"]:
            assert all(links[l][0] == n["id"] for l in out.get("links") or []), f"node {n['id']} output"


def test_shipped_workflows_use_the_toy_shift_for_toy_models_and_shift_5_for_wan():
    from comfyui_salt.toy.world import TOY_SHIFT
    folder = pathlib.Path(__file__).resolve().parents[1] / "workflows"
    seen = 0
    for path in sorted(folder.glob("*.json")):
        nodes = json.loads(path.read_text())["nodes"]
        toy = path.name.startswith("salt_toy_")
        for n in nodes:
            if n["type"] == "SaltFewStepSigmas":
                assert n["widgets_values"][2] == (TOY_SHIFT if toy else 5.0), (path.name, n["widgets_values"])
                seen += 1
    assert seen >= 6
