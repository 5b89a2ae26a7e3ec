"""Trail: records, JSON on disk, hard-pruned checkpoints, pick; FLOPs counting."""
import json

import pytest
import torch
from torch.utils.flop_counter import flop_registry

from ltp_core import LTP, Trail, count_flops, layer_flops
from ltp_core.engine.fit import accuracy
from ltp_core.models import mlp, small_cnn


def _filled(directory=None):
    trail = Trail(directory)
    for step, (sp, acc) in enumerate([(0.0, 0.97), (0.5, 0.97), (0.8, 0.96), (0.9, 0.93), (0.95, 0.80)]):
        trail.record(step=step * 10, epoch=step, sparsity=sp, soft_accuracy=acc, hard_accuracy=acc)
    return trail


def test_pick_by_min_accuracy_and_max_sparsity():
    trail = _filled()
    assert trail.pick(min_accuracy=0.95)["sparsity"] == 0.8
    assert trail.pick(max_sparsity=0.85)["hard_accuracy"] == 0.97
    assert trail.pick(max_sparsity=0.85)["sparsity"] == 0.5  # ties on accuracy: the sparser
    assert trail.pick(min_accuracy=0.9, max_sparsity=0.85)["sparsity"] == 0.8
    assert trail[1]["compression"] == pytest.approx(2.0)


def test_pick_errors_are_clear():
    trail = _filled()
    with pytest.raises(ValueError, match="best hard_accuracy is 0.9700"):
        trail.pick(min_accuracy=0.99)
    with pytest.raises(ValueError, match="needs"):
        trail.pick()
    with pytest.raises(ValueError, match="available"):
        trail.pick(min_accuracy=0.5, accuracy_key="top5")
    with pytest.raises(ValueError, match="sparsity"):
        Trail().record(step=0, epoch=0, sparsity=1.5)


def test_save_load_round_trip(tmp_path):
    trail = _filled(tmp_path)
    assert json.loads((tmp_path / "trail.json").read_text())["records"][2]["sparsity"] == 0.8
    again = Trail.load(tmp_path)
    assert again.records == trail.records
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a trail file"):
        Trail.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no trail"):
        Trail.load(tmp_path / "missing")


def test_trail_json_is_standard_json_at_full_sparsity_and_with_non_finite_values(tmp_path):
    trail = Trail(tmp_path)
    trail.record(step=0, epoch=0, sparsity=1.0, soft_accuracy=0.1, val_loss=float("nan"),
                 loss=torch.tensor(float("inf")), curve=[1.0, float("-inf")])
    text = (tmp_path / "trail.json").read_text()

    def refuse(constant):
        raise AssertionError(f"trail.json holds {constant}, which is not JSON")

    (record,) = json.loads(text, parse_constant=refuse)["records"]
    assert record["compression"] is None and record["val_loss"] is None and record["loss"] is None
    assert record["curve"] == [1.0, None] and record["sparsity"] == 1.0
    from ltp_core.deploy.pick import format_record

    assert "(all pruned)" in format_record(Trail.load(tmp_path)[0], "soft_accuracy")


def test_record_pruner_measures_and_saves_hard_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = mlp(hidden=(32,))
    ltp = LTP(model)
    with torch.no_grad():
        for t in ltp.thresholds.values():
            t.fill_(5e-3)
    x, y = torch.randn(64, 64), torch.randint(10, (64,))
    trail = Trail(tmp_path)
    entry = trail.record_pruner(ltp, lambda: accuracy(model, x, y), step=7, epoch=1.0, example_input=x[:1])
    assert entry["sparsity"] == pytest.approx(ltp.sparsity()["total"]) and 0 < entry["sparsity"] < 1
    assert set(entry["layer_sparsity"]) == {"0", "2"}
    dense_flops = count_flops(mlp(hidden=(32,)), x[:1])
    assert entry["flops"] < dense_flops
    state = trail.load_checkpoint(Trail.load(tmp_path).records[0])
    plain = mlp(hidden=(32,))
    plain.load_state_dict(state, strict=True)
    with ltp.hard_masks():
        assert torch.allclose(plain(x), model(x), atol=1e-6)
    assert entry["hard_accuracy"] == accuracy(plain, x, y)


def test_layer_flops_counts_convs_and_linears():
    model = small_cnn(channels=(4, 8))
    flops = layer_flops(model, torch.randn(1, 1, 8, 8))
    assert flops["0"] == 2 * 4 * 1 * 9 * 8 * 8  # 2 * Cout * Cin * k*k * H*W
    assert flops["3"] == 2 * 8 * 4 * 9 * 4 * 4
    assert flops["total"] >= flops["0"] + flops["3"] + flops["8"]
    half = count_flops(model, torch.randn(1, 1, 8, 8), {"0": 0.5})
    assert half == flops["total"] - flops["0"] // 2


def test_atomic_writes_keep_links_refuse_folders_and_write_into_devices(tmp_path):
    import os
    import stat

    from ltp_core.io import atomic_save, atomic_write_bytes

    target, link = tmp_path / "target.bin", tmp_path / "link.bin"
    target.write_bytes(b"old")
    link.symlink_to(target)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"  # written through the link
    atomic_save({"w": torch.ones(2)}, link)
    assert link.is_symlink() and torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_write_bytes(tmp_path, b"x")
    atomic_write_bytes(os.devnull, b"x")
    atomic_save({"w": torch.ones(2)}, os.devnull)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # still the device, not a file put in its place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.bin", "target.bin"]  # no temporary left


@pytest.mark.parametrize("content, message", [
    ('{"records": [1, 2]}', "record 0: not a mapping"),
    ('{"records": "abc"}', "its records are a str, not a list"),
    ('{"records": [{"step": 0}]}', "record 0: 'epoch' is missing or not a number"),
    ('{"records": [{"step": 0, "epoch": 0, "sparsity": "0.5"}]}', "'sparsity' is missing or not a number"),
    (b"\x80\x81", "UnicodeDecodeError"),
])
def test_a_damaged_trail_file_is_named(tmp_path, content, message):
    path = tmp_path / "trail.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=f"{path} is not a trail file") as e:
        Trail.load(tmp_path)
    assert message in str(e.value)


def test_count_flops_checks_the_densities():
    model, x = mlp(hidden=(8,)), torch.randn(1, 64)
    with pytest.raises(ValueError, match=r"densities name \['nope'\], which are not Conv/Linear layers"):
        count_flops(model, x, {"nope": 0.5})
    for bad in (-1.0, 2.0, float("nan"), True):
        with pytest.raises(ValueError, match=r"fractions of weights kept, in \[0, 1\]"):
            count_flops(model, x, {"0": bad})
    assert count_flops(model, x, {"0": 0.0}) < count_flops(model, x, {"0": 1.0}) == count_flops(model, x)


class _AttentionNet(torch.nn.Module):
    # nn.MultiheadAttention multiplies by out_proj.weight itself (out_proj is never called as
    # a module), and in eval mode it runs one fused op that FlopCounterMode has no formula for.
    def __init__(self, dim=8, unused=False):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = torch.nn.Sequential(torch.nn.Linear(dim, 3))
        self.spare = torch.nn.Linear(dim, dim) if unused else None

    def forward(self, x):
        return self.head(self.attention(x, x, x, need_weights=False)[0])


def test_flops_of_a_layer_its_parent_multiplies_by_are_its_own():
    net, x = _AttentionNet(), torch.randn(1, 4, 8)  # 4 tokens of 8 features
    flops = layer_flops(net, x)
    assert flops["attention.out_proj"] == 2 * 4 * 8 * 8
    assert flops["head.0"] == 2 * 4 * 8 * 3
    # + the input projection (q, k, v) and attention's two matmuls (4x4 scores over 2 heads of
    # 4), which torch 2.11's FlopCounterMode has no formula for on CPU
    projections = 2 * 4 * 8 * 8 + 2 * 4 * 8 * 3 + 2 * 4 * 8 * 24
    assert flops["total"] - projections in (0, 2 * (2 * 2 * 4 * 4 * 4))
    if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in flop_registry:
        assert flops["total"] - projections == 2 * (2 * 2 * 4 * 4 * 4)
    assert torch.backends.mha.get_fastpath_enabled()  # switched back on
    pruned = count_flops(net, x, {"attention.out_proj": 0.25, "head.0": 0.5})
    assert pruned == flops["total"] - round(0.75 * flops["attention.out_proj"]) - round(0.5 * flops["head.0"])


def test_flops_follow_a_pruned_parametrized_weight():
    torch.manual_seed(0)
    net, x = _AttentionNet(16), torch.randn(2, 5, 16)
    ltp = LTP(net)
    with torch.no_grad():
        for t in ltp.thresholds.values():
            t.fill_(1e-2)
    density = 1 - ltp.sparsity()["attention.out_proj"]
    assert 0 < density < 1
    assert ltp.flops(x) < layer_flops(net, x)["total"]
    assert layer_flops(net, x)["attention.out_proj"] == 2 * 10 * 16 * 16


def test_count_flops_says_which_pruned_layers_it_cannot_see():
    net, x = _AttentionNet(unused=True), torch.randn(1, 4, 8)
    with pytest.warns(RuntimeWarning, match=r"1 pruned layer\(s\) \(spare\) have no counted op"):
        count_flops(net, x, {"spare": 0.5, "head.0": 0.5})


def test_pick_bounds_are_finite_numbers(tmp_path):
    trail = Trail()
    trail.record(step=0, epoch=0, sparsity=0.5, hard_accuracy=0.9)
    with pytest.raises(ValueError, match="min_accuracy must be a finite number, got nan"):
        trail.pick(min_accuracy=float("nan"))
    assert trail.pick(max_sparsity=0.5)["step"] == 0


def test_a_trail_made_on_a_run_folder_continues_that_run(tmp_path):
    _filled(tmp_path)
    again = Trail(tmp_path)
    assert len(again) == 5 and again.pick(min_accuracy=0.95)["sparsity"] == 0.8
    again.record(step=50, epoch=5, sparsity=0.97, hard_accuracy=0.5)
    assert [r["step"] for r in Trail.load(tmp_path)] == [0, 10, 20, 30, 40, 50]  # added to, not written over
    assert len(Trail(tmp_path, records=[])) == 0
    (tmp_path / "trail.json").write_text("{damaged")
    with pytest.raises(ValueError, match="is not a trail file"):
        Trail(tmp_path)
