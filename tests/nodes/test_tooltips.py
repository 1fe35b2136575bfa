"""Every input of every EditLab node has a tooltip (the front end shows it on hover)."""
def test_every_input_of_every_node_has_a_tooltip(comfy_host):
    import importlib

    from packinfo import pack_node_modules

    missing, counted = [], 0
    modules = pack_node_modules()
    assert len(modules) >= 9
    for module_name in modules:
        module = importlib.import_module(f"editlab.nodes.{module_name}")
        for cls in module.NODES:
            schema = cls.define_schema()
            for inp in schema.inputs:
                counted += 1
                if not (getattr(inp, "tooltip", None) or "").strip():
                    missing.append(f"{schema.node_id}.{inp.id}")
    assert counted > 80
    assert not missing, f"{len(missing)} of {counted} inputs have no tooltip: {missing}"
