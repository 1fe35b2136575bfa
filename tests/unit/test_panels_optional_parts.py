"""Panel data from inputs that lack their optional parts (issue 27): a direction that carries only its vector (no
feature ids, no weights), and tables or directions whose features come without labels. The view shows what there
is, and what the page reads is always there (every feature has a ``labels`` list)."""
import json

import torch

from editlab.models import panels
from editlab.models.saedit.features import heatmap


def test_a_direction_without_feature_ids_lists_the_non_zero_entries_of_its_vector_strongest_first():
    vector = torch.zeros(64)
    vector[[3, 40, 7]] = torch.tensor([0.2, -0.9, 0.5])
    d = panels.direction_features("smile", None, None, vector)
    assert d["count"] == 3
    assert [(f["id"], f["weight"]) for f in d["features"]] == [(40, -0.9), (7, 0.5), (3, 0.2)]
    assert all(f["labels"] == ["smile"] for f in d["features"])
    assert panels.direction_ids(None, vector) == [3, 7, 40]


def test_ids_without_weights_take_the_vector_s_weights_or_none_and_nothing_at_all_is_an_empty_list():
    vector = torch.zeros(16)
    vector[[2, 5]] = torch.tensor([0.1, 0.8])
    d = panels.direction_features("d", torch.tensor([2, 5]), None, vector)
    assert [(f["id"], f["weight"]) for f in d["features"]] == [(5, 0.8), (2, 0.1)]
    bare = panels.direction_features("d", [4, 1])
    assert [(f["id"], f["weight"]) for f in bare["features"]] == [(4, None), (1, None)]
    assert panels.direction_features("d") == {"name": "d", "count": 0, "features": []}
    json.dumps(panels.feature_view({"tokens": []}, bare), allow_nan=False)  # publishable as the store does


def test_features_without_labels_get_an_empty_list_in_the_view_and_the_heat_map_draws():
    table = {"tokens": [{"position": 0, "token": "a", "features": [{"id": 5, "activation": 1.0}]},
                        {"position": 1, "token": "man", "features": [{"id": 9, "activation": 0.5, "labels": None}]}]}
    direction = {"name": "d", "features": [{"id": 9, "weight": 0.3}]}
    view = panels.feature_view(table, direction)
    assert [f["labels"] for row in view["tokens"] for f in row["features"]] == [[], []]
    assert view["direction"]["features"] == [{"id": 9, "weight": 0.3, "labels": []}]
    assert view["direction"]["count"] == 1 and view["columns"] == [5, 9]
    assert "labels" not in table["tokens"][0]["features"][0]  # the caller's table is not changed
    codes = torch.zeros(2, 16)
    codes[0, 5], codes[1, 9] = 1.0, 0.5
    image = heatmap(codes, ["a", "man"], table)
    assert image.shape[0] == 1 and image.shape[-1] == 3
