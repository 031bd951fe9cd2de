"""`ListPacker`: a checkpoint packs the callbacks' histories exactly as `pack_lists` does, converting only what
was appended since the last checkpoint, and repacks whatever changed in place."""
import pytest
import torch

import snapfit.resume as resume
from snapfit.resume import ListPacker, pack_lists, unpack_lists


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))
    return a == b


def history():
    return {"losses": [0.5 * i for i in range(10)], "lrs": [[0.1, 0.01] for _ in range(9)],
            "with_none": [1, None, 3.5, 4, 5, 6, 7, 8], "names": ["a"] * 9, "short": [1, 2],
            "nested": {"vals": list(range(12))}}


def test_packs_as_pack_lists_and_converts_only_what_was_appended(monkeypatch):
    seen, real = [], resume._packed_numbers

    def counting(items, row_shape):
        seen.append(len(items))
        return real(items, row_shape)

    monkeypatch.setattr(resume, "_packed_numbers", counting)
    packer, h = ListPacker(), history()
    assert same(packer(h), pack_lists(h))
    seen.clear()
    h["losses"] += [7.0, 8.0]
    h["lrs"].append([0.2, 0.02])
    h["with_none"].append(None)
    packed = packer(h)
    assert sorted(seen) == [1, 1, 2, 9], "only the appended numbers are converted (the names: looked at, not cached)"
    assert same(packed, pack_lists(h))
    assert unpack_lists(packed) == h


@pytest.mark.parametrize("change", ["replace", "row_in_place", "ragged", "not_a_number", "shrink", "new_list"])
def test_a_list_changed_in_place_is_packed_again(change):
    packer, h = ListPacker(), history()
    packer(h)
    if change == "replace":
        h["losses"][0] = 99.0
    elif change == "row_in_place":
        h["lrs"][3][1] = 99.0
    elif change == "ragged":
        h["lrs"].append([1.0])
    elif change == "not_a_number":
        h["losses"].append("x")
    elif change == "shrink":
        del h["losses"][-1]
    else:
        h["losses"] = [float(i) for i in range(20)]
    packed = packer(h)
    assert same(packed, pack_lists(h))
    assert unpack_lists(packed) == h


def test_the_same_list_twice_packs_the_same():
    packer, losses = ListPacker(), [float(i) for i in range(10)]
    packer({"a": losses, "b": losses})
    losses.append(10.0)
    packed = packer({"a": losses, "b": losses})
    assert same(packed["a"], packed["b"]) and packed["b"]["snapfit.packed_list"].numel() == 11
