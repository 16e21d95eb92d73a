"""plan.estimates on a placement built by hand: the decode step summed per resource, the time before
each layer that an Engram lookup can hide behind, prefill with its efficiency and fixed cost, the
bottleneck (ties by name), and the unplaced, unknown and empty cases. Every figure is worked in a
comment. Found by mutation testing (docs/ci.md, "Mutation testing")."""

from __future__ import annotations

from math import inf
from types import SimpleNamespace

import pytest

from mv4deploy.plan.costs import Cost
from mv4deploy.plan.estimates import INTERCONNECT, OVERHEAD, bound_tps, estimate
from mv4deploy.plan.groups import GroupClass
from mv4deploy.plan.items import Item, ItemKind, Option, Placed
from mv4deploy.plan.placement import Placement
from mv4deploy.plan.tiers import Tier, TierKind

GPU = Tier("g", TierKind.GPU, ("g",), 1000.0)
HOST = Tier("host", TierKind.HOST, ("host",), 100.0)
WORKLOAD = SimpleNamespace(batch=4, context_tokens=1000, chunk_tokens=100)


def item(name, kind, cls, layer, decode_s, prefill_s, limit, tier=GPU, units=1, known=True, start=0, stop=None):
    option = Option(tier, "bf16", 100, Cost(decode_s, "gpu", True, limit), Cost(prefill_s, "gpu", known, limit), 0.0)
    return Placed(Item(name, kind, cls, layer, (option,), units), option, start, units if stop is None else stop)


def placement(*placed, unplaced=()):
    return Placement(tuple(placed), tuple(unplaced), {}, {})


def model(engram_prefill_s=25.0, known=True):
    """Three layers. Decode: embedding 0.5 s, layer 0 attention 1.0 s, layer 1 experts cut in half (GPU half of
    2.0 s, host half of 6.0 s), the KV pool 0.8 s, the norms 0.2 s (no limit: the tier's name), the head 0.3 s,
    an Engram lookup of 5 s before layer 1. Prefill: 1 + 2 + 4 x 0.5 + 8 x 0.5 + 0.5 + 0.1 + 0.3 = 9.9 s."""
    W, R = ItemKind.WEIGHTS, GroupClass.ROUTED_EXPERTS
    return [
        item("head", W, GroupClass.HEAD, None, 0.3, 0.3, "g bandwidth"),
        item("norms", W, GroupClass.NORMS_MHC, None, 0.2, 0.1, ""),
        item("engram.1", ItemKind.ENGRAM, GroupClass.ENGRAM_TABLE, 1, 5.0, engram_prefill_s, "host random read",
             HOST),
        item("embed", W, GroupClass.EMBEDDING, None, 0.5, 1.0, "g bandwidth"),
        item("attn.0", W, GroupClass.ATTENTION, 0, 1.0, 2.0, "g bandwidth"),
        item("experts.1", W, R, 1, 2.0, 4.0, "g compute", units=4, stop=2),
        item("experts.1", W, R, 1, 6.0, 8.0, "host compute", HOST, units=4, start=2, known=known),
        item("kv", ItemKind.KV, None, None, 0.8, 0.5, "g bandwidth"),
    ]


def test_decode_step_per_resource_windows_and_engram_by_hand():
    est = estimate(placement(*model()), 3, WORKLOAD, crossing_decode_s=0.1, crossing_prefill_s=0.1, bound_s=2.0,
                   overhead_decode_s=0.4, overhead_prefill_s=1.0, prefill_efficiency=0.5)
    # before each layer: the embedding (0.5 s), the layers before it, and their share of the KV pool (0.8 / 3
    # per layer): layer 0 at 0.5; layer 1 at 0.5 + 1.0 + 0.8 / 3; layer 2 after layer 1's 1.0 + 3.0 as well
    assert est.engram_windows_s == pytest.approx({0: 0.5, 1: 1.5 + 0.8 / 3, 2: 5.5 + 1.6 / 3}, rel=1e-15)
    # the lookup outlasts its window by 5 - 1.7667 = 3.2333 s, charged to the lookup's limit
    exposed = 5.0 - (1.5 + 0.8 / 3)
    assert est.by_resource_s == pytest.approx({"g bandwidth": 0.3 + 0.5 + 1.0 + 0.8, "g": 0.2, "g compute": 1.0,
                                               "host compute": 3.0, INTERCONNECT: 0.1, OVERHEAD: 0.4,
                                               "host random read": exposed}, rel=1e-15)
    step = 2.6 + 0.2 + 1.0 + 3.0 + 0.1 + 0.4 + exposed                                 # 10.5333 s
    assert est.decode_step_s == pytest.approx(step, rel=1e-15)
    assert est.decode_tokens_per_s == pytest.approx(4 / step, rel=1e-15)
    # prefill: (9.9 s + 0.1 s crossing) / 0.5 efficiency + 1.0 s fixed = 21 s; the lookup of the next chunk
    # (25 s) outlasts it by 4 s: a chunk of 100 tokens every 25 s, 10 chunks to fill 1000 tokens
    assert est.prefill_chunk_s == pytest.approx(25.0, rel=1e-15)
    assert est.prefill_tokens_per_s == pytest.approx(4.0, rel=1e-15)
    assert est.time_to_first_token_s == pytest.approx(250.0, rel=1e-15)
    # the bound pays the crossing and the fixed cost too: 4 / (2.0 + 0.1 + 0.4)
    assert est.bound_decode_tokens_per_s == pytest.approx(1.6, rel=1e-15)
    assert est.bottleneck == "host random read: 3,233 of 10,533 ms per decode step"
    assert est.to_json() == {"decode_tokens_per_s": est.decode_tokens_per_s, "prefill_tokens_per_s": 4.0,
                             "time_to_first_token_s": est.time_to_first_token_s, "bottleneck": est.bottleneck,
                             "bound_decode_tokens_per_s": est.bound_decode_tokens_per_s}


def test_a_hidden_lookup_and_no_crossing_or_overhead_add_nothing():
    est = estimate(placement(*model(engram_prefill_s=3.0)), 3, WORKLOAD, 0.0, 0.0, 2.0)
    # the Engram lookup (5 s) still outlasts its window; prefill 9.9 s hides the 3 s lookup of the next chunk
    assert set(est.by_resource_s) == {"g bandwidth", "g", "g compute", "host compute", "host random read"}
    assert est.prefill_chunk_s == pytest.approx(9.9, rel=1e-15)
    assert est.bound_decode_tokens_per_s == 2.0                                        # 4 / 2.0
    # a lookup entirely hidden (0.5 s before layer 1's 1.77 s) adds no resource at all
    small = [p for p in model() if p.item.kind is not ItemKind.ENGRAM]
    small.append(item("engram.1", ItemKind.ENGRAM, GroupClass.ENGRAM_TABLE, 1, 0.5, 0.5, "host random read", HOST))
    assert "host random read" not in estimate(placement(*small), 3, WORKLOAD, 0.0, 0.0, 2.0).by_resource_s


def test_engram_lookups_beyond_the_layers_and_two_lookups_share_the_first_limit():
    rest = [p for p in model() if p.item.kind is not ItemKind.ENGRAM]
    lookups = [item("engram.7", ItemKind.ENGRAM, GroupClass.ENGRAM_TABLE, 7, 0.25, 0.0, "nvme read", HOST),
               item("engram.0", ItemKind.ENGRAM, GroupClass.ENGRAM_TABLE, 0, 1.0, 0.0, "host random read", HOST)]
    est = estimate(placement(*rest, *lookups), 3, WORKLOAD, 0.0, 0.0, 2.0)
    # layer 7 has no window (nothing hides it): 0.25 s; layer 0's window is the embedding, 0.5 s: 0.5 s exposed
    assert est.by_resource_s["nvme read"] == pytest.approx(0.75, rel=1e-15)
    assert "host random read" not in est.by_resource_s


def test_unknown_or_infinite_prefill_is_not_estimated():
    est = estimate(placement(*model(known=False)), 3, WORKLOAD, 0.0, 0.0, 2.0)
    assert est.prefill_chunk_s is None and est.prefill_tokens_per_s is None and est.time_to_first_token_s is None
    assert est.decode_tokens_per_s > 0                                                 # decode still is
    endless = model()
    endless[3] = item("embed", ItemKind.WEIGHTS, GroupClass.EMBEDDING, None, 0.5, inf, "g bandwidth")
    assert estimate(placement(*endless), 3, WORKLOAD, 0.0, 0.0, 2.0).prefill_chunk_s is None


def test_unplaced_weights_have_no_speed_and_no_bound():
    parts = model()
    est = estimate(placement(*parts[:-1], unplaced=parts[-1:]), 3, WORKLOAD, 0.1, 0.1, 2.0)
    assert est.decode_step_s == inf and est.decode_tokens_per_s == 0.0
    assert est.prefill_chunk_s is None and est.time_to_first_token_s is None
    assert est.bound_decode_tokens_per_s == 0.0
    assert est.bottleneck == "capacity: not every weight fits in GPU, host RAM and NVMe"
    assert bound_tps(4, 2.0, placement(*parts[:-1], unplaced=parts[-1:])) == 0.0


def test_nothing_placed_and_a_zero_bound():
    est = estimate(placement(), 3, WORKLOAD, 0.0, 0.0, 0.0)
    assert est.decode_step_s == 0 and est.decode_tokens_per_s == 0.0 and est.bottleneck == "none"
    assert est.prefill_chunk_s == 0.0 and est.prefill_tokens_per_s is None and est.time_to_first_token_s is None
    assert est.bound_decode_tokens_per_s == 0.0                                        # 0 s: no bound, not 4 / 0
    assert est.engram_windows_s == {0: 0.0, 1: 0.0, 2: 0.0}


def test_bottleneck_ties_go_to_the_first_name_and_short_steps_show_three_digits():
    # inserted "zz" first, then "aa", 1.5 ms each: the tie goes to "aa"; 3.14159 ms shows as 3.14
    placed = [item("a", ItemKind.WEIGHTS, GroupClass.ATTENTION, 0, 0.0015, 0.0, "zz"),
              item("b", ItemKind.WEIGHTS, GroupClass.ATTENTION, 1, 0.0015, 0.0, "aa"),
              item("c", ItemKind.WEIGHTS, GroupClass.ATTENTION, 1, 0.00014159, 0.0, "bb")]
    est = estimate(placement(*placed), 2, WORKLOAD, 0.0, 0.0, 1.0)
    assert est.bottleneck == "aa: 1.5 of 3.14 ms per decode step"
    # 99.96 ms shows as 100 (3 digits); 100.4 ms as 100 (a whole number), 1,234.4 ms with a separator
    slow = [item("a", ItemKind.WEIGHTS, GroupClass.ATTENTION, 0, 0.09996, 0.0, "x"),
            item("b", ItemKind.WEIGHTS, GroupClass.ATTENTION, 1, 1.1344, 0.0, "y")]
    assert estimate(placement(*slow), 2, WORKLOAD, 0.0, 0.0, 1.0).bottleneck == "y: 1,134 of 1,234 ms per decode step"
    assert estimate(placement(*slow[:1]), 2, WORKLOAD, 0.0, 0.0, 1.0).bottleneck == "x: 100 of 100 ms per decode step"


def test_an_embedding_cut_over_two_tiers_counts_both_pieces_before_layer_0():
    # halves of 0.5 s (GPU) and 3.0 s (host): 0.25 + 1.5 = 1.75 s before layer 0; layer 0 adds 1.0 s
    placed = [item("embed", ItemKind.WEIGHTS, GroupClass.EMBEDDING, None, 0.5, 0.0, "g bandwidth", units=2, stop=1),
              item("embed", ItemKind.WEIGHTS, GroupClass.EMBEDDING, None, 3.0, 0.0, "host bandwidth", HOST, units=2,
                   start=1),
              item("attn.0", ItemKind.WEIGHTS, GroupClass.ATTENTION, 0, 1.0, 0.0, "g bandwidth")]
    assert estimate(placement(*placed), 2, WORKLOAD, 0.0, 0.0, 1.0).engram_windows_s == {0: 1.75, 1: 2.75}
