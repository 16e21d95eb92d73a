"""The ``inspect`` result: a JSON-ready dict with stable keys (other tools and CI read it)."""

from __future__ import annotations

from dataclasses import fields

from mv4deploy.model.kv import kv_layout
from mv4deploy.model.source import ResolvedModel
from mv4deploy.model.spec import StoredFormats
from mv4deploy.formats import get_format


def inspect_report(resolved: ResolvedModel) -> dict:
    spec, inv = resolved.spec, resolved.inventory
    kv = kv_layout(spec)
    return {
        "model": spec.name,
        "source": resolved.source,
        "source_kind": resolved.kind,
        "architecture": spec.architecture.value,
        "params": {
            "total": inv.params_total,
            "active_per_token": inv.params_active_per_token,
            "mtp": inv.params_mtp,
            "by_role": inv.params_by_role,
        },
        "checkpoint_bytes": inv.checkpoint_bytes,
        "tensors": len(inv.tensors),
        "bytes_by_role": _bytes_by_role(inv),
        "formats": _formats(spec.formats),
        "kv_cache": {
            "format": kv.cache_format.value,
            "bytes_per_token": kv.bytes_per_token,
            "fixed_bytes_per_sequence": kv.window_bytes_per_sequence + kv.fixed_bytes_per_sequence,
            "pools": [{"name": p.name, "layers": len(p.layers), "bytes_per_entry": p.bytes_per_entry,
                       "tokens_per_entry": p.tokens_per_entry, "access": p.access.value,
                       "window_tokens": p.window_tokens, "bytes_per_token": p.bytes_per_token}
                      for p in kv.pools],
        },
        "engram": _engram(spec),
        "hc_mult": spec.hc_mult,
        "unknown_keys": list(spec.unknown_keys),
        "mismatches": [{"name": m.name, "problem": m.problem} for m in resolved.mismatches],
    }


def _formats(stored: StoredFormats) -> dict[str, str]:
    """Every stored-format slot (linear, expert, engram_table, plain, norm), by name: a slot added to
    ``StoredFormats`` shows up here without an edit. ``rules`` (per-weight overrides) are not a slot."""
    return {f.name: getattr(stored, f.name) for f in fields(stored) if f.name != "rules"}


def _bytes_by_role(inv) -> dict[str, int]:
    totals: dict[str, int] = {}
    for t in inv.tensors:
        key = "mtp" if t.mtp else t.role.value
        totals[key] = totals.get(key, 0) + t.nbytes
    return dict(sorted(totals.items()))


def _engram(spec) -> dict | None:
    engram = getattr(spec, "engram", None)
    if engram is None:
        return None
    row_bytes = get_format(spec.formats.engram_table).nbytes((1, engram.head_dim))
    return {"layers": list(engram.layer_ids), "rows": list(engram.num_embeddings), "row_bytes": row_bytes,
            "table_bytes": sum(engram.num_embeddings) * row_bytes,
            "rows_read_per_token": engram.hash_columns * len(engram.layer_ids)}

